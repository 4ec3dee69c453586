//! FHIR systems the connector writes and reads, each defined once.

/// The NHS number identifier system (UK Core).
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// HL7 v3 confidentiality codes (`meta.security`), e.g. `R` (restricted).
pub const V3_CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// HL7 v3 act codes (`meta.security`), e.g. `NOPAT` (not for the patient).
pub const V3_ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// PKB's privacy label code system (`meta.security` on resources sent to PKB).
pub const PKB_LABEL_SYSTEM: &str = "http://fhir.patientsknowbest.com/codesystem/privacy-label";
/// The tag that marks resources the connector writes (`meta.tag`); the code is the partner's id.
pub const SOURCE_PARTNER_TAG: &str = "https://id.york-connector.example/CodeSystem/source-partner";
/// What every resource a mapping produces has in `meta.source`, before `<partner>/<kind>@<version>`.
pub const MAPPING_SOURCE_PREFIX: &str = "urn:york-connector:mapping:";
