use super::*;
use crate::trace::{CgroupId, EventKind};

fn started() -> Started {
    Started {
        container_id: "c0ffee".into(),
        container_name: "web".into(),
        image_id: format!("sha256:{}", "1".repeat(64)),
        image_ref: "web:latest".into(),
        from_first_exec: true,
        started_unix_ms: 1,
    }
}

fn event(pid: u32) -> Event {
    Event {
        ts_ns: 1,
        pid,
        tid: pid,
        ppid: 1,
        cgroup: CgroupId(7),
        comm: "sh".into(),
        kind: EventKind::Exit {
            process_exited: true,
        },
    }
}

fn record(store: &Store, name: &str) -> SessionRecord {
    SessionRecord::new(name.into(), store.next_session_id().unwrap(), started())
}

#[test]
fn appended_events_come_back_in_order_with_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut r = record(&store, "web");
    r.events = 2;
    store.append(&r, &[event(10), event(11)]).unwrap();
    r.segments.push(Segment {
        first_event: 2,
        started_unix_ms: 5,
        from_first_exec: false,
        origin: "resumed".into(),
    });
    r.events = 3;
    store.append(&r, &[event(12)]).unwrap();
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let r = store.session("web").unwrap().unwrap();
    let mut seen = Vec::new();
    store
        .for_each_event(&r, |s, e| {
            seen.push((s.origin.clone(), e.pid));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        seen,
        [
            ("observed".to_owned(), 10),
            ("observed".to_owned(), 11),
            ("resumed".to_owned(), 12)
        ]
    );
}

#[test]
fn a_new_session_of_the_same_name_drops_the_old_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut old = record(&store, "web");
    old.events = 1;
    store.append(&old, &[event(1)]).unwrap();
    let new = record(&store, "web");
    store.put_session(&new).unwrap();
    let txn = store.db.begin_read().unwrap();
    let table = txn.open_table(EVENTS).unwrap();
    assert_eq!(table.iter().unwrap().count(), 0);
    assert_eq!(store.sessions().unwrap().len(), 1);
}

#[test]
fn gaps_and_loss_make_a_session_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut r = record(&store, "web");
    assert!(r.complete());
    r.gaps.push(Gap {
        from_unix_ms: 1000,
        to_unix_ms: 4000,
        reason: "the daemon was down".into(),
    });
    assert!(!r.complete());
    let why = r.incompleteness().unwrap();
    assert!(why.contains("1 gap(s) of 3 s"), "{why}");
}

fn closed_with_run(store: &Store, name: &str, cmd: &str, port: &str) -> SessionRecord {
    let mut r = record(store, name);
    r.state = SessionState::Closed;
    r.events = 1;
    r.run = Some(Box::new(RunSettings {
        cmd: Some(vec!["sh".into(), "-c".into(), cmd.into()]),
        env: vec!["GREETING=hi".into()],
        runtime: crate::docker::run::RuntimeSettings {
            published_ports: vec![crate::docker::run::PublishedPort {
                container_port: "80/tcp".into(),
                host_ip: String::new(),
                host_port: port.into(),
            }],
            ..Default::default()
        },
        ..Default::default()
    }));
    store.append(&r, &[event(1)]).unwrap();
    r
}

#[test]
fn run_settings_survive_export_import_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = closed_with_run(&store, "a", "serve", "8080");
    closed_with_run(&store, "b", "serve", "8081");
    let mut bundle = Vec::new();
    store.export(&a, &mut bundle).unwrap();
    let imported = store
        .import(&bundle, Some("a2"), OnExisting::Refuse)
        .unwrap();
    assert_eq!(imported.run, a.run);

    // Same command, other host ports: one way of running, both ports.
    let merged = store
        .merge("ab", &["a".into(), "b".into()], OnExisting::Refuse)
        .unwrap();
    let run = merged.run.unwrap();
    assert_eq!(run.cmd, a.run.as_ref().unwrap().cmd);
    assert_eq!(run.runtime.published_ports.len(), 2);

    // Run otherwise: merged for the files, without run settings, and
    // the record says why.
    closed_with_run(&store, "c", "other", "8080");
    let ac = store
        .merge("ac", &["a".into(), "c".into()], OnExisting::Refuse)
        .unwrap();
    assert_eq!(ac.run, None);
    let why = ac.run_not_merged.unwrap();
    assert!(
        why.contains("sessions a and c") && why.contains("command"),
        "{why}"
    );
}

#[test]
fn import_and_merge_refuse_an_existing_name_unless_told_to_replace() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = closed_with_run(&store, "a", "serve", "8080");
    closed_with_run(&store, "b", "serve", "8081");
    let mut bundle = Vec::new();
    store.export(&a, &mut bundle).unwrap();

    let refused = store
        .import(&bundle, Some("b"), OnExisting::Refuse)
        .unwrap_err();
    assert!(
        refused.downcast_ref::<SessionExists>().is_some(),
        "{refused:#}"
    );
    let refused = store
        .merge("b", &["a".into(), "a2".into()], OnExisting::Refuse)
        .unwrap_err();
    assert!(refused.to_string().contains("b"), "{refused:#}");

    // Replaced: the old session's events go with it.
    let old_b = store.session("b").unwrap().unwrap();
    let new_b = store
        .import(&bundle, Some("b"), OnExisting::Replace)
        .unwrap();
    assert_ne!(new_b.id, old_b.id);
    let txn = store.db.begin_read().unwrap();
    let events = txn.open_table(EVENTS).unwrap();
    assert_eq!(
        events
            .range((old_b.id, 0)..=(old_b.id, u64::MAX))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        events
            .range((new_b.id, 0)..=(new_b.id, u64::MAX))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn bundles_whose_record_would_hide_or_misplace_events_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = closed_with_run(&store, "a", "serve", "8080");
    let damage = |f: &dyn Fn(&mut SessionRecord)| {
        let mut r = a.clone();
        f(&mut r);
        let mut bundle = serde_json::to_vec(&BundleHeader {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            session: r,
        })
        .unwrap();
        bundle.push(b'\n');
        bundle.extend(serde_json::to_vec(&event(1)).unwrap());
        store
            .import(&bundle, Some("damaged"), OnExisting::Replace)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(damage(&|r| r.segments.clear()).contains("no segment"));
    assert!(damage(&|r| r.segments[0].first_event = 5).contains("not 0"));
    assert!(damage(&|r| r.started.image_id = "latest".into()).contains("image id"));
    assert!(
        damage(&|r| r.gaps.push(Gap {
            from_unix_ms: 9,
            to_unix_ms: 1,
            reason: String::new()
        }))
        .contains("before it begins")
    );
}

#[test]
fn prune_deletes_closed_sessions_older_than_the_limit_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut old = closed_with_run(&store, "old", "serve", "1");
    old.checkpoint_unix_ms = 1_000;
    store.put_session(&old).unwrap();
    let mut recent = closed_with_run(&store, "recent", "serve", "2");
    recent.checkpoint_unix_ms = 5_000;
    store.put_session(&recent).unwrap();
    let mut observing = record(&store, "observing");
    observing.checkpoint_unix_ms = 1_000;
    store.put_session(&observing).unwrap();
    assert_eq!(store.prune(2_000).unwrap(), ["old"]);
    let left: Vec<String> = store
        .sessions()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(left, ["observing", "recent"]);
}

#[test]
fn records_without_run_settings_still_load() {
    let mut old = serde_json::to_value(SessionRecord::new("old".into(), 1, started())).unwrap();
    old.as_object_mut().unwrap().remove("run");
    let back: SessionRecord = serde_json::from_value(old).unwrap();
    assert_eq!(back.run, None);
}

#[test]
fn unreadable_names_make_a_session_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut r = record(&store, "web");
    r.loss.unreadable_names = 3;
    assert!(!r.complete());
    let why = r.incompleteness().unwrap();
    assert!(why.contains("3 name(s)"), "{why}");
    assert!(!why.contains("lost"), "no event was lost: {why}");
    // Records stored before the counter existed read as 0.
    let mut json = serde_json::to_value(record(&store, "old")).unwrap();
    json["loss"]
        .as_object_mut()
        .unwrap()
        .remove("unreadable_names");
    let old: SessionRecord = serde_json::from_value(json).unwrap();
    assert!(old.complete());
}

#[test]
fn a_program_of_another_abi_makes_a_session_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut r = record(&store, "web");
    assert!(r.complete());
    r.loss.foreign_programs = 1;
    let why = r.incompleteness().unwrap();
    assert!(why.contains("1 program(s) built for another ABI"), "{why}");
    assert!(why.contains("foreign_abi"), "names the events: {why}");
    // Named when the session saw the program's path; "..." for the rest.
    r.foreign_programs
        .insert("/opt/old/tool: 32-bit x86".into());
    let why = r.incompleteness().unwrap();
    assert!(why.contains("(/opt/old/tool: 32-bit x86)"), "{why}");
    r.loss.foreign_programs = 2;
    let why = r.incompleteness().unwrap();
    assert!(why.contains("(/opt/old/tool: 32-bit x86, ...)"), "{why}");
    // Named up to FOREIGN_NAMED, however many there were.
    let many: Vec<String> = (0..40).map(|i| format!("/opt/t{i:02}: x32")).collect();
    r.name_foreign_programs(&many);
    assert_eq!(r.foreign_programs.len(), FOREIGN_NAMED);
    assert!(r.foreign_programs.contains("/opt/old/tool: 32-bit x86"));
}

#[test]
fn a_missed_start_up_makes_a_session_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut r = record(&store, "web");
    r.started.from_first_exec = false;
    assert!(!r.complete());
    let why = r.incompleteness().unwrap();
    assert!(
        why.contains("start-up") && why.contains("--restart") && why.contains("label"),
        "{why}"
    );
}

#[test]
fn session_names_are_checked() {
    assert!(check_session_name("web-merged.1").is_ok());
    for bad in ["", "-x", "a/b", "../x", &"a".repeat(129)] {
        assert!(check_session_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn an_unreadable_record_is_quarantined_at_open_and_the_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put_session(&record(&store, "good")).unwrap();
    let txn = store.db.begin_write().unwrap();
    for name in ["bad", "worse"] {
        txn.open_table(SESSIONS)
            .unwrap()
            .insert(name, &b"{\"name\": \"bad\", truncated"[..])
            .unwrap();
    }
    txn.commit().unwrap();
    assert!(store.sessions().is_err(), "the bad record does not parse");
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let names: Vec<String> = store
        .sessions()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["good"]);
    let quarantined = store.quarantined().unwrap();
    assert_eq!(
        quarantined
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["bad", "worse"]
    );
    assert!(quarantined[0].1.contains("line 1"), "{quarantined:?}");
    // Kept as it was.
    let txn = store.db.begin_read().unwrap();
    let kept = txn.open_table(QUARANTINE).unwrap();
    assert_eq!(
        kept.get("bad").unwrap().unwrap().value(),
        b"{\"name\": \"bad\", truncated"
    );
    drop(kept);
    drop(txn);

    // A second bad record of a name already quarantined is kept beside it.
    let txn = store.db.begin_write().unwrap();
    txn.open_table(SESSIONS)
        .unwrap()
        .insert("bad", &b"[]"[..])
        .unwrap();
    txn.commit().unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let names: Vec<String> = store
        .quarantined()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["bad", "bad~2", "worse"]);
}

#[test]
fn label_selectors_outlive_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.selectors().unwrap().is_empty());
    store.add_selector("team=web").unwrap();
    store.add_selector("team=web").unwrap();
    store.add_selector("app=db").unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.selectors().unwrap(), ["app=db", "team=web"]);
    assert!(store.remove_selector("app=db").unwrap());
    assert!(!store.remove_selector("app=db").unwrap(), "already gone");
}

fn events_of(store: &Store, id: u64) -> usize {
    let txn = store.db.begin_read().unwrap();
    let events = txn.open_table(EVENTS).unwrap();
    events.range((id, 0)..=(id, u64::MAX)).unwrap().count()
}

/// A bundle larger than one import batch is stored whole and in order,
/// and a bundle cut off part-way leaves no events behind.
#[test]
fn imports_stream_in_batches_and_a_cut_off_bundle_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let n = IMPORT_BATCH * 2 + 17;
    let mut r = record(&store, "big");
    r.state = SessionState::Closed;
    r.events = n as u64;
    let events: Vec<Event> = (0..n as u32).map(event).collect();
    store.append(&r, &events).unwrap();
    let mut bundle = Vec::new();
    store.export(&r, &mut bundle).unwrap();

    let imported = store
        .import_from(&bundle[..], Some("big2"), OnExisting::Refuse)
        .unwrap();
    let mut pids = Vec::new();
    store
        .for_each_event(&imported, |_, e| {
            pids.push(e.pid);
            Ok(())
        })
        .unwrap();
    assert_eq!(pids, (0..n as u32).collect::<Vec<_>>());

    // Cut after two batches: refused, and the batches written are gone.
    let cut: usize = bundle
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(IMPORT_BATCH * 2 + 1)
        .unwrap()
        .0;
    let before = store.next_session_id().unwrap();
    let e = store
        .import_from(&bundle[..=cut], Some("cut"), OnExisting::Refuse)
        .unwrap_err();
    assert!(e.to_string().contains("cut off"), "{e:#}");
    assert!(store.session("cut").unwrap().is_none());
    for id in before..store.next_session_id().unwrap() {
        assert_eq!(events_of(&store, id), 0, "events of the failed import {id}");
    }
}

/// A daemon killed during an import leaves a pending mark: the next start
/// deletes what it had written.
#[test]
fn an_import_a_killed_daemon_left_is_deleted_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = store.next_session_id().unwrap();
    store.mark_pending(id, true).unwrap();
    store.put_events(id, 0, &[event(1), event(2)]).unwrap();
    assert_eq!(events_of(&store, id), 2);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(events_of(&store, id), 0);
    let txn = store.db.begin_read().unwrap();
    let pending = txn.open_table(PENDING_IMPORTS).unwrap();
    assert_eq!(redb::ReadableTableMetadata::len(&pending).unwrap(), 0);
}

#[test]
fn an_overlong_bundle_line_is_refused_without_buffering_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let line = vec![b'x'; MAX_BUNDLE_LINE as usize + 10];
    let e = store
        .import_from(&line[..], None, OnExisting::Refuse)
        .unwrap_err();
    assert!(e.to_string().contains("line 1 is longer"), "{e:#}");
}
