//! Following a server's `next` links, page after page, without trusting them to end: a link back to a
//! page already read (a loop) or more pages than any real answer has stops the reading with an error naming
//! the destination and what to do. Used by pull, reconcile and partner feeds alike.

use std::collections::HashSet;

use serde_json::Value;

use super::transport::TransportError;

/// Most pages read for one search or history: at 500-1000 entries a page, tens of millions of entries.
pub const MAX_PAGES: usize = 50_000;

/// The links of one paged read so far.
pub struct Pages {
    destination: String,
    seen: HashSet<String>,
    max_pages: usize,
}

impl Pages {
    /// Starts a paged read at `first` (a path relative to the destination's base) on `destination`.
    pub fn new(destination: &str, first: &str, max_pages: usize) -> Self {
        let mut seen = HashSet::new();
        seen.insert(first.to_string());
        Self { destination: destination.to_string(), seen, max_pages }
    }

    /// The `next` link of `page`, or `None` after the last page; an error when the link points at a page
    /// already read or when the read has gone past the most pages allowed.
    pub fn next(&mut self, page: &Value) -> Result<Option<String>, TransportError> {
        self.follow(
            page["link"]
                .as_array()
                .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
                .and_then(|l| l["url"].as_str()),
        )
    }

    /// As [`Pages::next`], given the page's `next` link (for a reader that parses pages its own way).
    pub fn follow(&mut self, next: Option<&str>) -> Result<Option<String>, TransportError> {
        let Some(link) = next else {
            return Ok(None);
        };
        if self.seen.len() >= self.max_pages {
            return Err(TransportError::Setup(format!(
                "destination {}: more than {} pages in one search; stopped reading. The server's paging may be \
                 broken: check it (or its supplier) before running this again",
                self.destination, self.max_pages
            )));
        }
        if !self.seen.insert(link.to_string()) {
            return Err(TransportError::Setup(format!(
                "destination {}: the server's next link points back at a page already read (after {} pages); \
                 stopped reading so as not to loop forever. The server's paging is broken: report it to its \
                 supplier; nothing was changed",
                self.destination,
                self.seen.len()
            )));
        }
        Ok(Some(link.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(next: Option<&str>) -> Value {
        match next {
            Some(n) => json!({"resourceType": "Bundle", "link": [{"relation": "next", "url": n}]}),
            None => json!({"resourceType": "Bundle", "link": [{"relation": "self", "url": "x"}]}),
        }
    }

    #[test]
    fn a_link_back_to_a_page_read_stops_the_loop() {
        let mut p = Pages::new("cito", "Patient?_count=2", MAX_PAGES);
        assert_eq!(p.next(&page(Some("Patient?_count=2&page=2"))).unwrap().as_deref(), Some("Patient?_count=2&page=2"));
        let err = p.next(&page(Some("Patient?_count=2"))).unwrap_err().to_string();
        assert!(err.contains("destination cito") && err.contains("already read"), "{err}");
        let mut p = Pages::new("cito", "a", MAX_PAGES);
        assert!(p.next(&page(Some("a"))).is_err(), "a page pointing at itself");
        assert_eq!(Pages::new("cito", "a", MAX_PAGES).next(&page(None)).unwrap(), None);
    }

    #[test]
    fn pages_are_capped() {
        let mut p = Pages::new("pkb", "p0", 3);
        assert!(p.next(&page(Some("p1"))).is_ok());
        assert!(p.next(&page(Some("p2"))).is_ok());
        let err = p.next(&page(Some("p3"))).unwrap_err().to_string();
        assert!(err.contains("destination pkb") && err.contains("more than 3 pages"), "{err}");
    }
}
