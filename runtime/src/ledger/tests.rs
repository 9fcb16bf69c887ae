use super::*;

fn open(s: &mut LedgerState, account: &str, parent: Option<&str>, cap: u64) -> LedgerOutcome {
    s.apply(&LedgerCommand::Open {
        account: account.into(),
        parent: parent.map(str::to_string),
        cap,
    })
}

fn reserve(
    s: &mut LedgerState,
    id: u64,
    account: &str,
    amount: u64,
    premium: bool,
    day: u64,
) -> LedgerOutcome {
    s.apply(&LedgerCommand::Reserve {
        id,
        account: account.into(),
        amount,
        premium,
        day,
    })
}

fn commit(s: &mut LedgerState, id: u64, actual: u64) -> LedgerOutcome {
    s.apply(&LedgerCommand::Commit { id, actual })
}

#[test]
fn reserve_commit_release_and_exhaustion() {
    let mut s = LedgerState::default();
    assert_eq!(
        open(&mut s, "tenant:acme", None, 1000),
        LedgerOutcome::Opened
    );
    assert_eq!(
        reserve(&mut s, 1, "tenant:acme", 600, false, 1),
        LedgerOutcome::Reserved { economy: false }
    );
    // 600 reserved: 500 more does not fit.
    assert!(matches!(
        reserve(&mut s, 2, "tenant:acme", 500, false, 1),
        LedgerOutcome::Denied(BudgetDenial::Exhausted { .. })
    ));
    // Commit less than reserved: the rest is released.
    assert_eq!(
        commit(&mut s, 1, 100),
        LedgerOutcome::Committed { charged: 100 }
    );
    assert_eq!(
        reserve(&mut s, 3, "tenant:acme", 900, false, 1),
        LedgerOutcome::Reserved { economy: true }
    );
    // Never beyond the reservation.
    assert_eq!(
        commit(&mut s, 3, 5000),
        LedgerOutcome::Committed { charged: 900 }
    );
    assert_eq!(s.account("tenant:acme").unwrap().spent_today.micros(), 1000);
    // A second commit of the same reservation does nothing.
    assert_eq!(commit(&mut s, 3, 900), LedgerOutcome::UnknownReservation);
    assert!(matches!(
        reserve(&mut s, 4, "tenant:acme", 1, false, 1),
        LedgerOutcome::Denied(_)
    ));
    // A new day opens a new window; the all-time total keeps counting.
    assert!(matches!(
        reserve(&mut s, 5, "tenant:acme", 1000, false, 2),
        LedgerOutcome::Reserved { .. }
    ));
    commit(&mut s, 5, 1000);
    assert_eq!(s.account("tenant:acme").unwrap().total_spent.micros(), 2000);
    s.check_invariants().unwrap();
}

#[test]
fn premium_refused_at_eighty_percent_cheap_still_allowed() {
    let mut s = LedgerState::default();
    open(&mut s, "t", None, 100);
    assert!(matches!(
        reserve(&mut s, 1, "t", 79, true, 0),
        LedgerOutcome::Reserved { economy: false }
    ));
    commit(&mut s, 1, 79);
    assert!(matches!(
        reserve(&mut s, 2, "t", 1, true, 0),
        LedgerOutcome::Reserved { economy: true }
    ));
    commit(&mut s, 2, 1);
    assert!(matches!(
        reserve(&mut s, 3, "t", 1, true, 0),
        LedgerOutcome::Denied(BudgetDenial::PremiumRefused { .. })
    ));
    assert!(matches!(
        reserve(&mut s, 4, "t", 20, false, 0),
        LedgerOutcome::Reserved { .. }
    ));
    assert!(matches!(
        reserve(&mut s, 5, "t", 1, false, 0),
        LedgerOutcome::Denied(BudgetDenial::Exhausted { .. })
    ));
}

#[test]
fn a_child_is_carved_out_of_its_parent_and_cannot_outgrow_it() {
    let mut s = LedgerState::default();
    open(&mut s, "tenant:acme", None, 1000);
    open(&mut s, "agent:planner", Some("tenant:acme"), 800);
    assert!(matches!(
        open(&mut s, "agent:greedy", Some("agent:planner"), 900),
        LedgerOutcome::Denied(BudgetDenial::CapTooLarge { .. })
    ));
    open(&mut s, "agent:a", Some("agent:planner"), 500);
    open(&mut s, "agent:b", Some("agent:planner"), 500);
    assert!(matches!(
        reserve(&mut s, 1, "agent:a", 500, false, 0),
        LedgerOutcome::Reserved { .. }
    ));
    // b's own cap would allow 500, but the planner's 800 is shared: only 300 remain.
    let denied = reserve(&mut s, 2, "agent:b", 400, false, 0);
    assert!(
        matches!(&denied, LedgerOutcome::Denied(BudgetDenial::Exhausted { account, .. }) if account == "agent:planner"),
        "{denied:?}"
    );
    assert!(matches!(
        reserve(&mut s, 3, "agent:b", 300, false, 0),
        LedgerOutcome::Reserved { .. }
    ));
    s.check_invariants().unwrap();
    // Re-opening never raises a cap.
    open(&mut s, "agent:a", Some("agent:planner"), 800);
    assert_eq!(s.account("agent:a").unwrap().cap.micros(), 500);
}

#[test]
fn replaying_the_same_commands_gives_the_same_state() {
    let cmds = [
        LedgerCommand::Open {
            account: "t".into(),
            parent: None,
            cap: 100,
        },
        LedgerCommand::Open {
            account: "a".into(),
            parent: Some("t".into()),
            cap: 60,
        },
        LedgerCommand::Reserve {
            id: 1,
            account: "a".into(),
            amount: 50,
            premium: false,
            day: 3,
        },
        LedgerCommand::Reserve {
            id: 2,
            account: "a".into(),
            amount: 50,
            premium: false,
            day: 3,
        },
        LedgerCommand::Commit { id: 1, actual: 20 },
        LedgerCommand::Reserve {
            id: 3,
            account: "t".into(),
            amount: 70,
            premium: true,
            day: 3,
        },
    ];
    let run = || {
        let mut s = LedgerState::default();
        let outcomes: Vec<_> = cmds.iter().map(|c| s.apply(c)).collect();
        (s, outcomes)
    };
    let (a, oa) = run();
    let (b, ob) = run();
    assert_eq!(a, b);
    assert_eq!(oa, ob);
    a.check_invariants().unwrap();
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn command() -> impl Strategy<Value = LedgerCommand> {
        let account = prop_oneof![Just("t"), Just("a"), Just("b"), Just("c"), Just("nope")];
        prop_oneof![
            (
                account.clone(),
                prop_oneof![Just(Some("t")), Just(Some("a"))],
                0..2_000u64
            )
                .prop_map(|(account, parent, cap)| LedgerCommand::Open {
                    account: account.into(),
                    parent: parent.map(str::to_string),
                    cap,
                }),
            (1..40u64, account, 0..800u64, any::<bool>(), 0..3u64).prop_map(
                |(id, account, amount, premium, day)| {
                    LedgerCommand::Reserve {
                        id,
                        account: account.into(),
                        amount,
                        premium,
                        day,
                    }
                }
            ),
            (1..40u64, 0..1_000u64).prop_map(|(id, actual)| LedgerCommand::Commit { id, actual }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever commands arrive, in whatever order: no account ever has more spent
        /// and reserved than its cap, a child's spend counts against its ancestors,
        /// spend never decreases, and replaying gives the same state.
        #[test]
        fn the_ledger_invariants_hold_for_any_command_sequence(
            cmds in proptest::collection::vec(command(), 1..80),
        ) {
            let mut s = LedgerState::default();
            s.apply(&LedgerCommand::Open { account: "t".into(), parent: None, cap: 1_000 });
            let mut last_total = 0u64;
            for cmd in &cmds {
                let outcome = s.apply(cmd);
                if let (LedgerCommand::Commit { actual, .. }, LedgerOutcome::Committed { charged }) = (cmd, &outcome) {
                    prop_assert!(charged <= actual);
                }
                prop_assert!(s.check_invariants().is_ok(), "{:?}", s.check_invariants());
                let total = s.account("t").unwrap().total_spent.micros();
                prop_assert!(total >= last_total);
                last_total = total;
                for child in ["a", "b", "c"] {
                    if let Some(acc) = s.account(child) {
                        prop_assert!(acc.total_spent.micros() <= total);
                    }
                }
            }
            let mut replay = LedgerState::default();
            replay.apply(&LedgerCommand::Open { account: "t".into(), parent: None, cap: 1_000 });
            for cmd in &cmds {
                replay.apply(cmd);
            }
            prop_assert_eq!(replay, s);
        }
    }
}

#[test]
fn an_account_cannot_be_reopened_under_another_parent() {
    let mut s = LedgerState::default();
    open(&mut s, "tenant:acme", None, 1000);
    open(&mut s, "tenant:evil", None, 100_000);
    open(&mut s, "agent:mallory", Some("tenant:evil"), 100_000);
    open(&mut s, "agent:victim", Some("tenant:acme"), 1000);
    reserve(&mut s, 1, "agent:victim", 300, false, 1);
    commit(&mut s, 1, 300);
    // Another tenant (or another agent's child of the same name) is refused, and the
    // account keeps its parent, cap and spend.
    for parent in ["tenant:evil", "agent:mallory"] {
        assert!(
            matches!(
                open(&mut s, "agent:victim", Some(parent), 1),
                LedgerOutcome::Denied(BudgetDenial::AccountOwnedElsewhere { .. })
            ),
            "{parent}"
        );
    }
    assert!(matches!(
        open(&mut s, "agent:victim", None, 1),
        LedgerOutcome::Denied(BudgetDenial::AccountOwnedElsewhere { .. })
    ));
    let v = s.account("agent:victim").unwrap();
    assert_eq!((v.cap.micros(), v.spent_today.micros()), (1000, 300));
    // The same lineage re-opens it and keeps the spend.
    assert_eq!(
        open(&mut s, "agent:victim", Some("tenant:acme"), 1000),
        LedgerOutcome::Opened
    );
    assert_eq!(s.account("agent:victim").unwrap().spent_today.micros(), 300);
}
