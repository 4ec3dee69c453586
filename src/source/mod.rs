//! Sources: where a partner's exports come from this cycle (a fixed file, an inbox folder, a partner API),
//! gathered into rounds of inputs for planning, and what happens once a round's rows are planned (inbox files
//! archived, API cursors advanced, snapshots compared). Being built; see `config::SourceConfig`.

pub mod api;
