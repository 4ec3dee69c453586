use super::*;
use chrono::Utc;

fn policy(consent_required: bool) -> Policy {
    let a = |name: &str, dest: &str, cats: &[Category]| SharingConfig {
        name: name.into(),
        partner: "hub".into(),
        destination: dest.into(),
        categories: cats.to_vec(),
        lawful_basis: "6(1)(e); 9(2)(h)".into(),
        consent_required,
    };
    Policy {
        agreements: vec![
            a("hub-cito", "cito", &[Category::GeneralHealth, Category::MentalHealth]),
            a("hub-pkb", "pkb", &[Category::GeneralHealth, Category::MentalHealth, Category::SocialCare]),
        ],
        person_category: [("hub".to_string(), Category::GeneralHealth)].into_iter().collect(),
        partner_names: [
            ("hub", "hub"),
            ("yorkmentalhealthhub", "hub"),
            ("yorkmind", "york-mind"),
            ("carerscentre", "carers-centre"),
        ]
        .into_iter()
        .map(|(n, id)| (n.to_string(), id.to_string()))
        .collect(),
    }
}

/// The hub's policy plus an agreement letting its mental health data into York Mind's feed.
fn feed_policy() -> Policy {
    let mut p = policy(true);
    p.agreements.push(SharingConfig {
        name: "hub-feed".into(),
        partner: "hub".into(),
        destination: "feed:york-mind".into(),
        categories: vec![Category::GeneralHealth, Category::MentalHealth],
        lawful_basis: "6(1)(e); 9(2)(h)".into(),
        consent_required: true,
    });
    p
}

fn naming(mut s: StatementRecord, recorder: &str, partners: &[&str]) -> StatementRecord {
    s.partner = recorder.into();
    s.share_partners = serde_json::to_string(partners).unwrap();
    s
}

#[test]
fn a_feed_needs_the_partner_named_in_the_consent_in_force_whatever_the_spelling() {
    let p = feed_policy();
    let feed = Audience::Partner("york-mind");
    let o = origin(Category::MentalHealth, false);
    let decide = |s: &StatementRecord| p.decide_for("feed:york-mind", feed, &o, true, Some(s));
    let base = statement("given", true, false, &[]);
    assert!(decide(&naming(base.clone(), "hub", &["YORK MIND"])).is_send());
    assert!(decide(&naming(base.clone(), "hub", &["Carers' Centre", "york mind"])).is_send());
    // Named nowhere: nothing, even with the central record agreed.
    let v = decide(&naming(base.clone(), "hub", &["Carers Centre"]));
    assert!(matches!(&v, Verdict::Withhold(w) if w.contains("feed:york-mind")), "{v:?}");
    // Recorded by York Mind naming another partner: the person agreed to a circle York Mind is in.
    assert!(decide(&naming(base.clone(), "york-mind", &["York Mental Health Hub"])).is_send());
    // Recorded by York Mind naming no partner: no sharing between partners at all.
    assert!(!decide(&naming(base.clone(), "york-mind", &[])).is_send());
    // An unknown name allows nothing.
    assert!(!decide(&naming(base.clone(), "hub", &["Someone Else"])).is_send());
    // No agreement for the category: nothing, whatever the consent.
    let social = origin(Category::SocialCare, false);
    assert!(!p.decide_for("feed:york-mind", feed, &social, true, Some(&naming(base, "hub", &["York Mind"]))).is_send());
}

#[test]
fn a_partners_own_records_need_no_agreement_but_still_the_persons_consent() {
    let p = policy(true);
    let own = Origin {
        partner: "york-mind".into(),
        category: Category::MentalHealth,
        not_for_patient: true,
        is_patient: false,
    };
    let feed = Audience::Partner("york-mind");
    let base = statement("given", false, false, &[]);
    let v = p.decide_for("feed:york-mind", feed, &own, true, Some(&naming(base.clone(), "hub", &["York Mind"])));
    assert!(matches!(&v, Verdict::Send(permit) if permit.agreement.contains("own record")), "{v:?}");
    assert!(!p.decide_for("feed:york-mind", feed, &own, true, Some(&naming(base.clone(), "hub", &[]))).is_send());
    assert!(!p.decide_for("feed:york-mind", feed, &own, true, None).is_send());
    let withdrawn = naming(statement("withdrawn", true, true, &[]), "hub", &["York Mind"]);
    assert!(!p.decide_for("feed:york-mind", feed, &own, true, Some(&withdrawn)).is_send());
    // Third-party information stays out when the person asked so.
    let third = naming(statement("given", true, true, &["third_party"]), "hub", &["York Mind"]);
    assert!(!p.decide_for("feed:york-mind", feed, &own, true, Some(&third)).is_send());
}

fn origin(category: Category, nfp: bool) -> Origin {
    Origin { partner: "hub".into(), category, not_for_patient: nfp, is_patient: false }
}

fn statement(decision: &str, cito: bool, pkb: bool, restrictions: &[&str]) -> StatementRecord {
    StatementRecord {
        id: 7,
        person: "Person/p".into(),
        patient: "Patient/a".into(),
        partner: "hub".into(),
        record_key: "CN-1".into(),
        resource_id: "Consent/c".into(),
        decision: decision.into(),
        effective: "2024-01-02".into(),
        given_on: "2024-01-02".into(),
        withdrawn_on: None,
        share_cito: cito,
        share_pkb: pkb,
        share_partners: "[]".into(),
        restrictions: serde_json::to_string(restrictions).unwrap(),
        statement_hash: "h".into(),
        recorded_at: Utc::now(),
    }
}

#[test]
fn deny_by_default_without_consent_or_agreement() {
    let p = policy(true);
    let o = origin(Category::MentalHealth, false);
    assert!(
        matches!(p.decide("cito", Profile::Cito, &o, true, None), Verdict::Withhold(r) if r.contains("no consent"))
    );
    let s = statement("given", true, true, &[]);
    let sexual = origin(Category::SexualHealth, false);
    assert!(
        matches!(p.decide("cito", Profile::Cito, &sexual, true, Some(&s)), Verdict::Withhold(r) if r.contains("agreement"))
    );
    assert!(p.decide("cito", Profile::Cito, &o, true, Some(&s)).is_send());
    // Without consent required, no statement means it flows; an objection still stops it.
    let open = policy(false);
    assert!(open.decide("cito", Profile::Cito, &o, true, None).is_send());
    assert!(!open.decide("cito", Profile::Cito, &o, true, Some(&statement("withdrawn", true, true, &[]))).is_send());
}

#[test]
fn flags_restrictions_and_not_for_patient() {
    let p = policy(true);
    let mh = origin(Category::MentalHealth, false);
    let no_pkb = statement("given", true, false, &[]);
    assert!(p.decide("cito", Profile::Cito, &mh, true, Some(&no_pkb)).is_send());
    assert!(!p.decide("pkb", Profile::Pkb, &mh, true, Some(&no_pkb)).is_send());
    let restricted = statement("given", true, true, &["mental_health"]);
    assert!(!p.decide("cito", Profile::Cito, &mh, true, Some(&restricted)).is_send());
    // The person's own record is exempt from category restrictions.
    let patient = Origin { is_patient: true, ..origin(Category::MentalHealth, false) };
    assert!(p.decide("cito", Profile::Cito, &patient, true, Some(&restricted)).is_send());
    let nfp = origin(Category::MentalHealth, true);
    let all = statement("given", true, true, &[]);
    assert!(p.decide("cito", Profile::Cito, &nfp, true, Some(&all)).is_send());
    assert!(
        matches!(p.decide("pkb", Profile::Pkb, &nfp, true, Some(&all)), Verdict::Withhold(r) if r.contains("not for the patient"))
    );
    let third = statement("given", true, true, &["third_party"]);
    assert!(!p.decide("cito", Profile::Cito, &nfp, true, Some(&third)).is_send());
    assert!(p.decide("cito", Profile::Cito, &mh, true, Some(&third)).is_send());
}

#[test]
fn origin_round_trips_and_labels_are_set() {
    let o = Origin {
        partner: "york-mind".into(),
        category: Category::SocialCare,
        not_for_patient: true,
        is_patient: false,
    };
    assert_eq!(Origin::decode(&o.encode()), Some(o));
    let mut r =
        json!({"resourceType": "Encounter", "meta": {"security": [{"system": V3_CONFIDENTIALITY, "code": "N"}]}});
    label(&mut r, Category::MentalHealth, true);
    let codes: Vec<&str> =
        r["meta"]["security"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["R", "PSY", "NOPAT"]);
}
