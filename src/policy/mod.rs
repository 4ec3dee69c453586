//! Policy: decides, per resource and destination, whether it may be sent (and on which agreement and
//! consent) or must be withheld (and why). The rules, in order:
//!
//! 1. An information sharing agreement (`[[sharing]]`) must let the partner's data of the resource's
//!    category go to the destination, and also the person's own record (their Patient's category): nothing
//!    about a person goes where their record may not.
//! 2. Nothing marked not-for-the-patient goes to the patient-held record (PKB), whatever else says.
//! 3. The person's consent: the statement in force is the one that takes effect last, from any partner
//!    (so a withdrawal anywhere applies everywhere). Declined or withdrawn: nothing is sent. Given: the
//!    destination must be one they agreed to (central record, PKB), the category must not be one they
//!    restricted (their Patient record itself is exempt: without it nothing else can be placed), and with
//!    a third-party restriction nothing marked not-for-the-patient is sent anywhere. No statement at all:
//!    nothing is sent when the agreement requires explicit consent (the default), else it flows.
//!
//! The same rules run when the outbox is planned and again just before a row is sent, so a consent change
//! between the two is honoured.

use serde_json::{Value, json};

use crate::config::{Config, Profile, SharingConfig};
use crate::mapping::{Catalog, Category, Decision, RecordKind, Restriction};
use crate::store::StatementRecord;

pub use crate::model::Origin;
pub use crate::model::fhir::{V3_ACT_CODE, V3_CONFIDENTIALITY};

/// What allowed a disclosure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub agreement: String,
    pub lawful_basis: String,
    /// The consent statement relied on (`partner/record#id decision effective`); `None` when the agreement
    /// does not require consent and none is recorded.
    pub consent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Send(Permit),
    Withhold(String),
}

impl Verdict {
    pub fn is_send(&self) -> bool {
        matches!(self, Verdict::Send(_))
    }
}

/// The agreements and what the rules need to know of the mappings.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub agreements: Vec<SharingConfig>,
    /// Partner -> the category of its person records (their Patient).
    pub person_category: std::collections::BTreeMap<String, Category>,
    /// How consent records name partners (id, name, aliases; folded by [`fold_name`]) -> partner id.
    pub partner_names: std::collections::BTreeMap<String, String>,
    /// Partners whose consent export could not be read at all in their latest cycle -> why. Everything about a
    /// person from such a partner is held (at planning and at the last moment before sending) until a cycle
    /// reads the export again: statements recorded earlier may no longer be what the partner holds.
    pub unreadable_consent: std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<String, String>>>,
}

/// Who receives what is decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    /// A destination (the central record, the patient-held record) with its profile.
    Destination(Profile),
    /// A partner's feed: the partner's id.
    Partner(&'a str),
}

/// A partner's name as consent records give it, folded for matching: lower case, letters and digits only
/// ("Carers' Centre" and "carers centre" match).
pub fn fold_name(name: &str) -> String {
    name.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

impl Policy {
    pub fn new(config: &Config, catalog: &Catalog) -> Policy {
        let person_category = catalog
            .partners
            .iter()
            .map(|(id, p)| {
                let c = p.mappings.get(&RecordKind::Person).map_or(Category::GeneralHealth, |m| m.category);
                (id.clone(), c)
            })
            .collect();
        let mut partner_names = std::collections::BTreeMap::new();
        for (id, p) in &catalog.partners {
            for n in std::iter::once(id).chain(std::iter::once(&p.name)).chain(&p.aliases) {
                partner_names.insert(fold_name(n), id.clone());
            }
        }
        Policy { agreements: config.sharing.clone(), person_category, partner_names, ..Policy::default() }
    }

    /// Records whether `partner`'s consent export could be read this cycle (`None`: it was; `Some(why)`: it was
    /// not, and the partner's data about people is held until it is).
    pub fn set_consent_unreadable(&self, partner: &str, why: Option<String>) {
        let mut map = self.unreadable_consent.write().unwrap_or_else(|p| p.into_inner());
        match why {
            Some(w) => map.insert(partner.to_string(), w),
            None => map.remove(partner),
        };
    }

    /// Why `partner`'s consent export is unreadable, if it is.
    pub fn consent_unreadable(&self, partner: &str) -> Option<String> {
        self.unreadable_consent.read().unwrap_or_else(|p| p.into_inner()).get(partner).cloned()
    }

    /// As [`Policy::decide`] for a resource of `resource_type` whose person is `person` (their ordering group or
    /// Patient): everything except an Organization is about a person, so one that names no person is withheld
    /// (no one's consent can be checked for it) instead of going out unchecked.
    pub fn decide_resource(
        &self,
        destination: &str,
        profile: Profile,
        origin: &Origin,
        resource_type: &str,
        person: Option<&str>,
        consent: Option<&StatementRecord>,
    ) -> Verdict {
        let about_person = is_about_person(resource_type);
        if about_person && person.is_none() {
            return Verdict::Withhold(format!(
                "a {resource_type} that refers to no Patient: no one's consent can be checked for it, so it is not sent; check the mapping's references"
            ));
        }
        self.decide(destination, profile, origin, about_person, consent)
    }

    /// The partner ids a statement names as ones the person agrees to share with (names no partner is
    /// known by are left out: they can allow nothing).
    pub fn named_partners(&self, s: &StatementRecord) -> Vec<String> {
        let names: Vec<String> = serde_json::from_str(&s.share_partners).unwrap_or_default();
        let mut ids: Vec<String> =
            names.iter().filter_map(|n| self.partner_names.get(&fold_name(n)).cloned()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Whether the person agrees that `partner` receives what the partnership holds about them: it is named
    /// in the statement in force, or it recorded that statement and the person named other partners there
    /// (someone who tells York Mind "share with the Hub" agrees that York Mind and the Hub share with each
    /// other; someone who names no partner agrees to none).
    fn partner_agreed(&self, s: &StatementRecord, partner: &str) -> bool {
        let named = self.named_partners(s);
        named.iter().any(|p| p == partner) || (s.partner == partner && !named.is_empty())
    }

    fn agreement(&self, partner: &str, category: Category, destination: &str) -> Option<&SharingConfig> {
        self.agreements
            .iter()
            .find(|a| a.partner == partner && a.destination == destination && a.categories.contains(&category))
    }

    /// The decision for one resource. `about_person`: whether it belongs to a person (everything but
    /// Organizations); `consent`: the statement in force for that person, if any.
    pub fn decide(
        &self,
        destination: &str,
        profile: Profile,
        origin: &Origin,
        about_person: bool,
        consent: Option<&StatementRecord>,
    ) -> Verdict {
        self.decide_for(destination, Audience::Destination(profile), origin, about_person, consent)
    }

    /// As [`Policy::decide`], for a destination or a partner's feed (`destination` is then `feed:<partner>`).
    /// For a feed, the partner's own records need no agreement (they are its own), but the person must
    /// still agree that the partner receives their unified record; and the person's consent is read for
    /// the partner instead of for a destination.
    pub fn decide_for(
        &self,
        destination: &str,
        audience: Audience<'_>,
        origin: &Origin,
        about_person: bool,
        consent: Option<&StatementRecord>,
    ) -> Verdict {
        let own = matches!(audience, Audience::Partner(p) if p == origin.partner);
        let own_agreement;
        let agreement = if own {
            own_agreement = SharingConfig {
                name: format!("{}'s own record", origin.partner),
                partner: origin.partner.clone(),
                destination: destination.to_string(),
                categories: vec![origin.category],
                lawful_basis: "the partner's own record, returned to it".into(),
                consent_required: true,
            };
            Some(&own_agreement)
        } else {
            self.agreement(&origin.partner, origin.category, destination)
        };
        let Some(agreement) = agreement else {
            return Verdict::Withhold(format!(
                "no information sharing agreement lets {} {} data go to {destination}",
                origin.partner, origin.category
            ));
        };
        if about_person && !origin.is_patient && !own {
            let pc = self.person_category.get(&origin.partner).copied().unwrap_or(Category::GeneralHealth);
            if self.agreement(&origin.partner, pc, destination).is_none() {
                return Verdict::Withhold(format!(
                    "the person's own record ({pc}) from {} may not go to {destination}, so nothing about them may",
                    origin.partner
                ));
            }
        }
        if origin.not_for_patient && audience == Audience::Destination(Profile::Pkb) {
            return Verdict::Withhold("marked not for the patient: never sent to the patient-held record".into());
        }
        let permit = |consent: Option<String>| {
            Verdict::Send(Permit {
                agreement: agreement.name.clone(),
                lawful_basis: agreement.lawful_basis.clone(),
                consent,
            })
        };
        if !about_person {
            return permit(None);
        }
        if let Some(why) = self.consent_unreadable(&origin.partner) {
            return Verdict::Withhold(format!(
                "{UNREADABLE_HOLD}: {}'s consent export could not be read ({why}); its data about people is held until a cycle reads it",
                origin.partner
            ));
        }
        if let Some(s) = consent.filter(|s| s.is_unreadable()) {
            return Verdict::Withhold(format!(
                "{UNREADABLE_HOLD} ({}/{}): held until the record is corrected and read again",
                s.partner, s.record_key
            ));
        }
        let Some(s) = consent else {
            return if agreement.consent_required {
                Verdict::Withhold(format!(
                    "no consent recorded for this person; agreement \"{}\" needs explicit consent",
                    agreement.name
                ))
            } else {
                permit(None)
            };
        };
        let cite = cite(s);
        match s.decision.decision() {
            Some(Decision::Given) => {}
            Some(Decision::Declined) => return Verdict::Withhold(format!("consent declined ({cite})")),
            Some(Decision::Withdrawn) | None => return Verdict::Withhold(format!("consent withdrawn ({cite})")),
        }
        let agreed = match audience {
            Audience::Destination(Profile::Cito) => s.share_cito,
            Audience::Destination(Profile::Pkb) => s.share_pkb,
            Audience::Partner(p) => self.partner_agreed(s, p),
        };
        if !agreed {
            return Verdict::Withhold(format!("the person has not agreed to share with {destination} ({cite})"));
        }
        let Ok(restrictions) = restrictions(s) else {
            return Verdict::Withhold(format!(
                "the person's recorded restrictions cannot be read ({cite}); withheld until the consent record is read again"
            ));
        };
        if !origin.is_patient && restrictions.iter().any(|r| r.category() == Some(origin.category)) {
            return Verdict::Withhold(format!(
                "the person asked that {} information is not shared ({cite})",
                origin.category
            ));
        }
        if origin.not_for_patient && restrictions.contains(&Restriction::ThirdParty) {
            return Verdict::Withhold(format!(
                "marked not for the patient, and the person asked that third-party information is not shared ({cite})"
            ));
        }
        permit(Some(cite))
    }
}

/// How every withholding for an unreadable consent record (or export) begins. Such a hold is temporary: what
/// a destination already holds is left in place (not retracted) while it stands.
pub const UNREADABLE_HOLD: &str = "consent record unreadable";

/// Whether a withholding reason is a hold for unreadable consent (see [`UNREADABLE_HOLD`]).
pub fn is_unreadable_hold(reason: &str) -> bool {
    reason.starts_with(UNREADABLE_HOLD)
}

/// How the audit trail and reasons cite a statement: `hub/CN-701#12 given 2023-03-24`.
pub fn cite(s: &StatementRecord) -> String {
    // A statement a dry run would record has no id yet.
    let id = if s.id == i64::MAX { "new".to_string() } else { s.id.to_string() };
    let dated = if s.first_seen { " (dated when first seen: the record gives no date)" } else { "" };
    format!("{}/{}#{id} {} {}{dated}", s.partner, s.record_key, s.decision, s.effective)
}

/// Whether a resource of this type is about a person: everything but a partner's Organization.
pub fn is_about_person(resource_type: &str) -> bool {
    resource_type != "Organization"
}

/// The restrictions a statement records. `Err` when they cannot be read (not a JSON list of known codes): a
/// restriction that cannot be read might be the one that matters, so the caller withholds.
pub fn restrictions(s: &StatementRecord) -> Result<Vec<Restriction>, String> {
    let codes: Vec<String> =
        serde_json::from_str(&s.restrictions).map_err(|e| format!("restrictions are not a list of codes: {e}"))?;
    codes.iter().map(|r| Restriction::parse(r).ok_or_else(|| format!("\"{r}\" is not a restriction code"))).collect()
}

/// Security labels for a resource of `category`: v3 confidentiality (N normal, R restricted for sensitive
/// categories), a v3 sensitivity code where one exists (PSY mental health, SEX sexual health) and NOPAT for
/// data not to be disclosed to the patient. Replaces any v3 labels the resource had.
pub fn label(resource: &mut Value, category: Category, not_for_patient: bool) {
    let Some(obj) = resource.as_object_mut() else { return };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else { return };
    let security = meta.entry("security").or_insert_with(|| json!([]));
    let Some(list) = security.as_array_mut() else { return };
    list.retain(|c| c["system"] != V3_CONFIDENTIALITY && c["system"] != V3_ACT_CODE);
    let confidentiality = if category == Category::GeneralHealth { "N" } else { "R" };
    list.push(json!({ "system": V3_CONFIDENTIALITY, "code": confidentiality }));
    let sensitivity = match category {
        Category::MentalHealth => Some("PSY"),
        Category::SexualHealth => Some("SEX"),
        Category::GeneralHealth | Category::SocialCare => None,
    };
    if let Some(code) = sensitivity {
        list.push(json!({ "system": V3_ACT_CODE, "code": code }));
    }
    if not_for_patient {
        list.push(json!({ "system": V3_ACT_CODE, "code": "NOPAT" }));
    }
}

#[cfg(test)]
mod tests;

/// An audit entry (a disclosure or retraction) as a FHIR R4 Provenance of the version sent, with a
/// deterministic id so copying it twice writes it once. (AuditEvent would be the natural resource, but it
/// is create-only, so a retried copy would duplicate it; Helios FHIR Server accepts no writes of it at all.)
/// The agreement is `policy` (a URN of its name), the lawful basis, destination and content hash are
/// `reason` texts, and the consent relied on is the `source` entity.
pub fn provenance(e: &crate::store::AuditEntry) -> Value {
    let id = crate::mapping::ids::resource_id("connector", "audit", "provenance", &e.id.to_string());
    let operation = if e.action == crate::model::AuditAction::Retracted { "DELETE" } else { "UPDATE" };
    let target = match (&e.resource_type, &e.resource_id, &e.version_id) {
        (Some(t), Some(i), Some(v)) if e.action != crate::model::AuditAction::Retracted => {
            format!("{t}/{i}/_history/{v}")
        }
        (Some(t), Some(i), _) => format!("{t}/{i}"),
        _ => String::new(),
    };
    let mut reason = Vec::new();
    for (label, v) in [
        ("destination", e.destination.as_ref()),
        ("lawful basis", e.lawful_basis.as_ref()),
        ("category", e.category.as_ref()),
        ("content sha256", e.content_hash.as_ref()),
        ("why", e.reason.as_ref()),
    ] {
        if let Some(v) = v {
            reason.push(json!({ "text": format!("{label}: {v}") }));
        }
    }
    let mut out = json!({
        "resourceType": "Provenance",
        "id": id,
        "target": [{ "reference": target }],
        "recorded": e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "activity": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": operation }] },
        "agent": [{
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "performer" }] },
            "who": { "display": "York Hub connector" },
        }],
    });
    if !reason.is_empty() {
        out["reason"] = Value::Array(reason);
    }
    if let Some(a) = &e.agreement {
        let urn: String =
            a.chars().map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '-' }).collect();
        out["policy"] = json!([format!("urn:york-connector:agreement:{urn}")]);
    }
    if let Some(c) = &e.consent {
        out["entity"] = json!([{ "role": "source", "what": { "display": format!("consent {c}") } }]);
    }
    out
}
