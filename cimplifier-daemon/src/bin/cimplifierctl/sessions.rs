//! The sessions the daemon keeps: `sessions`, `events`, `report`, and
//! moving them between daemons with `export`, `import` and `merge`.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use cimplifier::api::{Address, pb};
use cimplifier::cli::{quote_capped, shutdown_signal};
use tokio_stream::StreamExt;

use crate::args::path_arg;
use crate::daemon::{connect, daemon, runtime, status, usage};
use crate::render::{mb, print, print_json, session_json, state_name};

pub fn list(socket: &Address, json: bool) -> anyhow::Result<()> {
    let (sessions, selectors) = runtime()?.block_on(async {
        let mut api = connect(socket).await?;
        let list = api
            .list_sessions(pb::ListSessionsRequest {})
            .await
            .map_err(status)?
            .into_inner();
        if !json {
            return Ok::<_, anyhow::Error>((list.sessions, list.label_selectors));
        }
        // The list leaves out what needs the model (executables and
        // resources); ask for each session, as `observe --json` does.
        let mut full = Vec::with_capacity(list.sessions.len());
        for s in list.sessions {
            if s.state == pb::session::State::Failed as i32 {
                full.push(s);
                continue;
            }
            let req = pb::GetSessionRequest {
                container: s.container.clone(),
            };
            match api.get_session(req).await {
                Ok(r) => full.push(r.into_inner()),
                // Gone since the list was taken (a session can be replaced).
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(status(e)),
            }
        }
        Ok((full, list.label_selectors))
    })?;
    if json {
        let rows: Vec<serde_json::Value> = sessions.iter().map(session_json).collect();
        return print(&(serde_json::to_string_pretty(&rows)? + "\n"));
    }
    // The built-in selector is always there; given ones are worth a line.
    let given: Vec<&str> = selectors
        .iter()
        .map(String::as_str)
        .filter(|s| *s != cimplifier::session::OBSERVE_LABEL)
        .collect();
    let mut text = sessions_table(&sessions);
    if !given.is_empty() {
        text += &format!(
            "observing containers created with label {} (`stop --label` forgets one)\n",
            given.join(", ")
        );
    }
    print(&text)
}

/// The table of `sessions`: one row per session; a failed session's error
/// on the line below it.
fn sessions_table(sessions: &[pb::Session]) -> String {
    let mut text = format!(
        "{:<32} {:<10} {:>9} {:>6} {:>10} {:>4} {:<8} {:>9}  {}\n",
        "CONTAINER",
        "STATE",
        "EVENTS",
        "LOST",
        "UNREADABLE",
        "GAPS",
        "COMPLETE",
        "SECONDS",
        "IMAGE"
    );
    for s in sessions {
        let failed = s.state == pb::session::State::Failed as i32;
        text += &format!(
            "{:<32} {:<10} {:>9} {:>6} {:>10} {:>4} {:<8} {:>9.1}  {}\n",
            s.container,
            state_name(s.state),
            s.events,
            s.lost_events,
            s.unreadable_names,
            s.gaps.len(),
            if s.complete && !failed { "yes" } else { "no" },
            s.duration_ms as f64 / 1000.0,
            if s.image_ref.is_empty() {
                "-"
            } else {
                &s.image_ref
            },
        );
        if !s.error.is_empty() {
            text += &format!("    error: {}\n", s.error);
        }
    }
    text
}

pub fn report(socket: &Address, container: String, json: bool, dot: bool) -> anyhow::Result<()> {
    let format = if dot {
        pb::get_report_request::Format::Dot
    } else {
        pb::get_report_request::Format::Json
    };
    let r = daemon(socket, async |mut c| {
        c.get_report(pb::GetReportRequest {
            container,
            format: format as i32,
        })
        .await
    })?;
    if dot {
        return print(&r.body);
    }
    if json {
        return print(&(r.body + "\n"));
    }
    let report: cimplifier::model::report::Report = serde_json::from_str(&r.body)
        .context("the daemon's report is not the model JSON this cimplifierctl reads")?;
    print(&report.table())
}

pub fn events(
    socket: &Address,
    session: Vec<String>,
    exe: Vec<String>,
    kind: Vec<String>,
    buffer: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    for p in &exe {
        path_arg(p, "--exe")?;
    }
    let kinds = cimplifier::session::observer::event_kinds();
    if let Some(bad) = kind.iter().find(|k| !kinds.contains(&k.as_str())) {
        return Err(usage(format!(
            "--kind {}: not an event kind; give one of {}",
            quote_capped(bad, 80),
            kinds.join(", ")
        )));
    }
    let request = pb::StreamEventsRequest {
        sessions: session,
        executables: exe,
        kinds: kind,
        buffer: buffer.unwrap_or(0),
    };
    runtime()?.block_on(async {
        let mut api = connect(socket).await?;
        if !request.sessions.is_empty() {
            let list = api
                .list_sessions(pb::ListSessionsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            check_streamable(&request.sessions, &list)?;
        }
        let mut stream = api
            .stream_events(request)
            .await
            .map_err(status)?
            .into_inner();
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            let item = tokio::select! {
                _ = &mut stop => return Ok(()),
                item = stream.next() => item,
            };
            let Some(item) = item else { return Ok(()) };
            let e = item.map_err(status)?;
            let line = if json {
                let mut v: serde_json::Value = serde_json::from_str(&e.json)?;
                v["session"] = e.session.into();
                v["executable"] = e.executable.into();
                v.to_string() + "\n"
            } else {
                format!(
                    "{:<16} {:>7} {:<24} {:<10} {}\n",
                    e.session,
                    e.pid,
                    if e.executable.is_empty() {
                        e.comm
                    } else {
                        e.executable
                    },
                    if e.syscall.is_empty() {
                        e.kind
                    } else {
                        e.syscall
                    },
                    event_detail(&e.json)
                )
            };
            print(&line)?;
        }
    })
}

/// Refuses a --session filter that can match nothing: a session that is
/// closed or failed records no more events, and one that does not exist
/// yet may never come (a mistyped name would wait forever).
fn check_streamable(names: &[String], list: &pb::ListSessionsResponse) -> anyhow::Result<()> {
    let observing = pb::session::State::Observing as i32;
    for name in names {
        match list.sessions.iter().find(|s| &s.container == name) {
            Some(s) if s.state == observing => {}
            Some(s) => {
                return Err(usage(format!(
                    "--session {name}: the session is {}, so it records no more events; \
                     `cimplifierctl report {name}` shows what it saw",
                    state_name(s.state)
                )));
            }
            None => {
                return Err(anyhow::Error::new(crate::daemon::NoSuch(format!(
                    "--session {}: no such session (`cimplifierctl sessions` lists them); \
                     a container observed by label can be tailed once its session exists, \
                     or leave out --session to tail every session",
                    quote_capped(name, 80)
                ))));
            }
        }
    }
    Ok(())
}

/// The names or address an event is about, for the table of `events`.
fn event_detail(json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return String::new();
    };
    let mut parts: Vec<String> = v["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["path"].as_str().map(str::to_owned))
        .collect();
    for key in ["socket", "fd_path", "exe"] {
        if let Some(s) = v.get(key).filter(|s| !s.is_null()) {
            parts.push(s.as_str().map_or_else(|| s.to_string(), str::to_owned));
        }
    }
    if let Some(errno) = v["errno"].as_str() {
        parts.push(format!("= {errno}"));
    }
    parts.join(" ")
}

pub fn export(socket: &Address, session: String, output: &Path, json: bool) -> anyhow::Result<()> {
    let to_stdout = output.as_os_str() == "-";
    if to_stdout && json {
        return Err(usage(
            "--json with -o -: stdout holds the bundle; write it to a file to get JSON",
        ));
    }
    let bundle = runtime()?.block_on(async {
        let mut api = connect(socket).await?;
        let mut stream = api
            .export_session(pb::ExportSessionRequest {
                session: session.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let mut bundle = Vec::new();
        while let Some(chunk) = stream.next().await {
            bundle.extend_from_slice(&chunk.map_err(status)?.data);
        }
        Ok::<_, anyhow::Error>(bundle)
    })?;
    if to_stdout {
        std::io::stdout().lock().write_all(&bundle)?;
        return Ok(());
    }
    std::fs::write(output, &bundle)
        .with_context(|| format!("writing the bundle {}", output.display()))?;
    if json {
        return print_json(&serde_json::json!({
            "session": session, "output": output, "bytes": bundle.len(),
        }));
    }
    eprintln!("wrote {} ({})", output.display(), mb(bundle.len() as u64));
    Ok(())
}

pub fn import(
    socket: &Address,
    bundle: &Path,
    name: Option<String>,
    replace: bool,
    json: bool,
) -> anyhow::Result<()> {
    let bytes = if bundle.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut b)
            .context("reading the bundle from stdin")?;
        b
    } else {
        std::fs::read(bundle).map_err(|e| usage(format!("the bundle {}: {e}", bundle.display())))?
    };
    let what = if bundle.as_os_str() == "-" {
        "stdin".to_owned()
    } else {
        bundle.display().to_string()
    };
    let mut chunks: Vec<pb::ImportChunk> = bytes
        .chunks(1 << 20)
        .map(|c| pb::ImportChunk {
            name: String::new(),
            data: c.to_vec(),
            replace,
        })
        .collect();
    match chunks.first_mut() {
        Some(first) => first.name = name.unwrap_or_default(),
        None => return Err(usage(format!("{what} is empty: not a session bundle"))),
    }
    let s = daemon(socket, async |mut c| {
        c.import_session(tokio_stream::iter(chunks)).await
    })?;
    if json {
        return print_json(&session_json(&s));
    }
    print(&format!(
        "imported session {} ({}): {} events\n",
        s.container, s.image_ref, s.events
    ))
}

pub fn merge(
    socket: &Address,
    into: String,
    sessions: Vec<String>,
    replace: bool,
    json: bool,
) -> anyhow::Result<()> {
    let s = daemon(socket, async |mut c| {
        c.merge_sessions(pb::MergeSessionsRequest {
            into,
            sessions,
            replace,
        })
        .await
    })?;
    if json {
        return print_json(&session_json(&s));
    }
    print(&format!(
        "merged {} segments into session {} ({}): {} events{}\n",
        s.segments.len(),
        s.container,
        s.image_ref,
        s.events,
        if s.complete {
            ""
        } else {
            "; INCOMPLETE: a source lost events, has a gap or missed its start-up"
        }
    ))
}

/// `sessions rm`: deletes each session, in order; stops at the first the
/// daemon refuses (an observing one, an unknown name).
pub fn remove(socket: &Address, sessions: Vec<String>, json: bool) -> anyhow::Result<()> {
    let mut deleted = Vec::new();
    for name in sessions {
        let s = daemon(socket, async |mut c| {
            c.delete_session(pb::DeleteSessionRequest {
                session: name.clone(),
            })
            .await
        })
        .with_context(|| format!("deleting session {name}"))?;
        if !json {
            print(&format!(
                "deleted session {} ({} events)\n",
                s.container, s.events
            ))?;
        }
        deleted.push(serde_json::json!({ "session": s.container, "events": s.events }));
    }
    if json {
        print(&(serde_json::to_string_pretty(&deleted)? + "\n"))?;
    }
    Ok(())
}
