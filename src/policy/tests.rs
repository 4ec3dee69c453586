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
        ..Policy::default()
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
        decision: decision.parse().expect("a consent statement"),
        effective: "2024-01-02".into(),
        given_on: "2024-01-02".into(),
        withdrawn_on: None,
        share_cito: cito,
        share_pkb: pkb,
        share_partners: "[]".into(),
        restrictions: serde_json::to_string(restrictions).unwrap(),
        statement_hash: "h".into(),
        recorded_at: Utc::now(),
        first_seen: false,
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

#[test]
fn unparseable_restrictions_withhold_instead_of_meaning_none() {
    let p = policy(true);
    let mh = origin(Category::MentalHealth, false);
    for stored in ["not json", "{\"mental_health\": true}", "[\"mental-health\"]", ""] {
        let mut s = statement("given", true, true, &[]);
        s.restrictions = stored.into();
        let v = p.decide("cito", Profile::Cito, &mh, true, Some(&s));
        assert!(matches!(&v, Verdict::Withhold(r) if r.contains("restrictions cannot be read")), "{stored:?}: {v:?}");
    }
    // Readable restrictions still work both ways.
    assert!(
        p.decide("cito", Profile::Cito, &mh, true, Some(&statement("given", true, true, &["social_care"]))).is_send()
    );
}

#[test]
fn an_unreadable_consent_record_holds_everything_about_the_person_under_every_agreement() {
    for consent_required in [true, false] {
        let p = policy(consent_required);
        let mut hold = statement("unreadable", false, false, &[]);
        hold.restrictions = "[]".into();
        for o in [
            origin(Category::MentalHealth, false),
            Origin { is_patient: true, ..origin(Category::GeneralHealth, false) },
        ] {
            let v = p.decide("cito", Profile::Cito, &o, true, Some(&hold));
            assert!(matches!(&v, Verdict::Withhold(r) if r.contains("consent record unreadable")), "{v:?}");
        }
        // A partner's feed too.
        let f = feed_policy();
        let v = f.decide_for(
            "feed:york-mind",
            Audience::Partner("york-mind"),
            &origin(Category::MentalHealth, false),
            true,
            Some(&hold),
        );
        assert!(matches!(&v, Verdict::Withhold(r) if r.contains("consent record unreadable")), "{v:?}");
    }
}

#[test]
fn a_partner_whose_consent_export_is_unreadable_has_its_data_about_people_held() {
    let p = policy(false);
    let given = statement("given", true, true, &[]);
    let mh = origin(Category::MentalHealth, false);
    assert!(p.decide("cito", Profile::Cito, &mh, true, Some(&given)).is_send());
    p.set_consent_unreadable("hub", Some("consent.csv: NOT MAPPED".into()));
    let v = p.decide("cito", Profile::Cito, &mh, true, Some(&given));
    assert!(
        matches!(&v, Verdict::Withhold(r) if r.contains("consent record unreadable") && r.contains("hub's consent export")),
        "{v:?}"
    );
    // The partner's Organization is about no one and still flows; the hold is shared by clones (the
    // destinations' copy of the rules).
    let org =
        Origin { partner: "hub".into(), category: Category::GeneralHealth, not_for_patient: false, is_patient: false };
    assert!(p.clone().decide_resource("cito", Profile::Cito, &org, "Organization", None, None).is_send());
    assert!(!p.clone().decide("cito", Profile::Cito, &mh, true, Some(&given)).is_send());
    p.set_consent_unreadable("hub", None);
    assert!(p.decide("cito", Profile::Cito, &mh, true, Some(&given)).is_send());
}

#[test]
fn everything_but_an_organization_is_about_a_person() {
    let p = policy(false);
    let o = origin(Category::MentalHealth, false);
    // Without a person there is no consent to check: withheld, even where consent is not required.
    for t in ["Encounter", "Consent", "QuestionnaireResponse", "Observation"] {
        let v = p.decide_resource("cito", Profile::Cito, &o, t, None, None);
        assert!(matches!(&v, Verdict::Withhold(r) if r.contains("refers to no Patient")), "{t}: {v:?}");
    }
    // With a person, their withdrawal is honoured (it used to be skipped when the Patient reference was missing).
    let withdrawn = statement("withdrawn", true, true, &[]);
    assert!(!p.decide_resource("cito", Profile::Cito, &o, "Encounter", Some("Person/p"), Some(&withdrawn)).is_send());
    assert!(p.decide_resource("cito", Profile::Cito, &o, "Encounter", Some("Person/p"), None).is_send());
}

#[test]
fn consent_dated_after_today_is_pending_and_cannot_outrank_a_withdrawal() {
    use crate::store::prevails;
    let today = chrono::NaiveDate::from_ymd_opt(2025, 6, 1).unwrap();
    let at = |decision: &str, effective: &str| StatementRecord {
        effective: effective.into(),
        ..statement(decision, true, true, &[])
    };
    let withdrawn = at("withdrawn", "2024-12-01");
    let typo = at("given", "2033-03-24");
    assert!(typo.is_pending(today));
    assert!(!prevails(Some(&withdrawn), &typo, today), "a 2033 typo must not beat a real withdrawal");
    assert!(!prevails(None, &typo, today), "pending consent is not in force even alone");
    assert!(prevails(Some(&withdrawn), &at("given", "2025-06-01"), today), "given today is in force");
    // A withdrawal dated ahead is honoured at once.
    assert!(prevails(Some(&at("given", "2025-01-01")), &at("withdrawn", "2025-06-03"), today));
    // A hold beats everything and is not displaced by another record's later statement.
    let hold = at("unreadable", "2025-06-01");
    assert!(prevails(Some(&at("given", "2025-05-30")), &hold, today));
    assert!(!prevails(Some(&hold), &at("given", "2025-06-01"), today));
}
