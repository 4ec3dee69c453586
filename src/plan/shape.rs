//! Shaping: a mapped resource made into what one destination is sent. The security labels of its category
//! (and not-for-the-patient), the tag naming its source partner, then the destination profile's rules.

use serde_json::{Value, json};

use crate::config::Profile;
use crate::deliver::profile;
use crate::model::Category;
use crate::model::fhir::SOURCE_PARTNER_TAG;
use crate::policy;

/// The body sent to a destination of `profile`, or why that destination's rules refuse it.
pub fn shape(
    profile: Profile,
    body: &Value,
    category: Category,
    not_for_patient: bool,
    partner: &str,
) -> Result<Value, String> {
    let mut body = body.clone();
    policy::label(&mut body, category, not_for_patient);
    tag(&mut body, partner);
    profile::apply(profile, category, body)
}

/// Marks a resource as written by the connector for `partner` (so reconcile can find ours among others').
pub fn tag(resource: &mut Value, partner: &str) {
    let Some(obj) = resource.as_object_mut() else { return };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else { return };
    let tags = meta.entry("tag").or_insert_with(|| json!([]));
    let Some(list) = tags.as_array_mut() else { return };
    list.retain(|c| c["system"] != SOURCE_PARTNER_TAG);
    list.push(json!({ "system": SOURCE_PARTNER_TAG, "code": partner }));
}
