//! The encoder against the live API's recorded streams (`daemon/testdata/responses/`, from the
//! official .NET SDK's test suite), checked by a small accumulator that does what the
//! openai-python stream helper does and asserts what it assumes.

use std::time::Duration;

use bytes::BytesMut;
use mythos_protocol::{DoneInfo, ErrorKind, FinishReason, RerouteMode, StreamEvent, Usage};
use serde_json::{json, Map, Value};

use super::stream::{ResponsesEncoder, SIGNATURE_PREFIX};
use super::{items, Item};
use crate::http::relay::{Answer, Block, Encoder, Head};

fn head() -> Head {
    Head {
        provider: "sim".into(),
        model: "gpt-4o-mini".into(),
        record: 7,
        reroutes: 0,
        overhead: Duration::ZERO,
    }
}

fn done(finish: FinishReason, usage: Usage) -> StreamEvent {
    StreamEvent::Done(Box::new(DoneInfo {
        finish,
        usage,
        cost_usd: 0.0,
        latency_ms: 1,
        provider: "sim".into(),
        model: "gpt-4o-mini".into(),
        record: 7,
    }))
}

/// Our stream for `events`: the opening frames, then each event until the encoder ends it.
fn encode(events: Vec<StreamEvent>) -> Vec<u8> {
    let (mut enc, mut out) = ResponsesEncoder::start(&head(), Map::new());
    for ev in events {
        let mut chunk = BytesMut::new();
        let over = enc.event(ev, &mut chunk);
        out.extend_from_slice(&chunk);
        if over {
            return out.to_vec();
        }
    }
    panic!("the stream did not end");
}

/// The SSE body of a .NET SDK session record.
fn recorded(json_text: &str) -> Vec<u8> {
    let record: Value = serde_json::from_str(json_text).unwrap();
    let lines = record["Entries"][0]["ResponseBody"].as_array().unwrap();
    lines
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect::<String>()
        .into_bytes()
}

/// `(event name, data)` of each SSE frame; comments skipped.
fn frames(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    let mut out = Vec::new();
    for frame in text.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let mut event = None;
        let mut data = None;
        for line in frame.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = Some(e.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(d).unwrap());
            }
        }
        if let (Some(e), Some(d)) = (event, data) {
            out.push((e, d));
        }
    }
    out
}

/// What a client ends up with.
#[derive(Debug)]
struct Accumulated {
    types: Vec<String>,
    /// Items as `output_item.done` gave them.
    done: Vec<Value>,
    /// The response object of the last event.
    last: Value,
}

fn text_of_item(item: &Value) -> String {
    match item["type"].as_str().unwrap() {
        "message" => item["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["text"].as_str().unwrap())
            .collect(),
        "reasoning" => item["summary"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["text"].as_str().unwrap())
            .collect(),
        "function_call" => item["arguments"].as_str().unwrap().to_string(),
        other => panic!("item type {other}"),
    }
}

/// Accumulate like openai-python's `ResponseStreamState.accumulate_event`, asserting the
/// invariants it relies on and the ones Codex reads.
fn accumulate(body: &[u8]) -> Accumulated {
    let frames = frames(body);
    let mut types = Vec::new();
    let mut snapshot: Option<Value> = None;
    let mut done: Vec<Value> = Vec::new();
    let mut last = Value::Null;
    for (seq, (event, data)) in frames.into_iter().enumerate() {
        assert_eq!(
            data["type"],
            json!(event),
            "the event line names the data type"
        );
        assert_eq!(data["sequence_number"], json!(seq), "sequence of {event}");
        types.push(event.clone());
        let Some(snap) = snapshot.as_mut() else {
            assert_eq!(
                event, "response.created",
                "the SDK needs response.created first"
            );
            assert_eq!(data["response"]["output"], json!([]));
            snapshot = Some(data["response"].clone());
            continue;
        };
        let output = snap["output"].as_array_mut().unwrap();
        let oi = data["output_index"].as_u64().map(|n| n as usize);
        let id_matches = |output: &Vec<Value>| {
            if let Some(id) = data.get("item_id") {
                assert_eq!(&output[oi.unwrap()]["id"], id, "{event}: item_id");
            }
        };
        match event.as_str() {
            "response.in_progress" => {}
            "response.output_item.added" => {
                assert_eq!(oi, Some(output.len()), "items are added in order");
                output.push(data["item"].clone());
            }
            "response.content_part.added" => {
                id_matches(output);
                let content = output[oi.unwrap()]["content"].as_array_mut().unwrap();
                assert_eq!(data["content_index"], json!(content.len()));
                content.push(data["part"].clone());
            }
            "response.output_text.delta" => {
                id_matches(output);
                let ci = data["content_index"].as_u64().unwrap() as usize;
                let part = &mut output[oi.unwrap()]["content"][ci];
                let t = part["text"].as_str().unwrap().to_string();
                part["text"] = json!(t + data["delta"].as_str().unwrap());
            }
            "response.output_text.done" | "response.content_part.done" => {
                id_matches(output);
                let ci = data["content_index"].as_u64().unwrap() as usize;
                let text = data.get("text").unwrap_or(&data["part"]["text"]);
                assert_eq!(&output[oi.unwrap()]["content"][ci]["text"], text, "{event}");
            }
            "response.function_call_arguments.delta" => {
                id_matches(output);
                let item = &mut output[oi.unwrap()];
                let a = item["arguments"].as_str().unwrap().to_string();
                item["arguments"] = json!(a + data["delta"].as_str().unwrap());
            }
            "response.function_call_arguments.done" => {
                id_matches(output);
                assert_eq!(output[oi.unwrap()]["arguments"], data["arguments"]);
            }
            "response.reasoning_summary_part.added" => {
                id_matches(output);
                let summary = output[oi.unwrap()]["summary"].as_array_mut().unwrap();
                assert_eq!(data["summary_index"], json!(summary.len()));
                summary.push(data["part"].clone());
            }
            "response.reasoning_summary_text.delta" => {
                id_matches(output);
                let si = data["summary_index"].as_u64().unwrap() as usize;
                let part = &mut output[oi.unwrap()]["summary"][si];
                let t = part["text"].as_str().unwrap().to_string();
                part["text"] = json!(t + data["delta"].as_str().unwrap());
            }
            "response.reasoning_summary_text.done" | "response.reasoning_summary_part.done" => {
                id_matches(output);
                let si = data["summary_index"].as_u64().unwrap() as usize;
                let text = data.get("text").unwrap_or(&data["part"]["text"]);
                assert_eq!(&output[oi.unwrap()]["summary"][si]["text"], text, "{event}");
            }
            "response.output_item.done" => {
                let n = oi.unwrap();
                assert_eq!(n, done.len(), "items finish in order");
                let item = &data["item"];
                assert_eq!(item["id"], output[n]["id"]);
                assert_eq!(text_of_item(item), text_of_item(&output[n]), "{event}");
                done.push(item.clone());
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                last = data["response"].clone();
                assert_eq!(last["id"], snap["id"]);
                if event != "response.failed" {
                    assert_eq!(
                        last["output"],
                        json!(done),
                        "the final output is the done items"
                    );
                }
            }
            other => panic!("unexpected event {other}"),
        }
    }
    Accumulated { types, done, last }
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every field the live API sent, we send too (at the top of each event and in the objects it
/// carries), but `obfuscation`, a random padding against length side channels.
fn assert_same_fields(recorded: &[(String, Value)], ours: &[(String, Value)]) {
    assert_eq!(recorded.len(), ours.len());
    for ((event, r), (_, o)) in recorded.iter().zip(ours) {
        let pairs = [
            (r, o, "event"),
            (&r["response"], &o["response"], "response"),
            (&r["response"]["usage"], &o["response"]["usage"], "usage"),
            (&r["item"], &o["item"], "item"),
            (&r["part"], &o["part"], "part"),
        ];
        for (r, o, what) in pairs {
            let ours = keys(o);
            for k in keys(r) {
                if k != "obfuscation" {
                    assert!(ours.contains(&k), "{event}: {what} lacks `{k}`");
                }
            }
        }
        for (r, o) in r["response"]["output"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(o["response"]["output"].as_array().into_iter().flatten())
        {
            let ours = keys(o);
            for k in keys(r) {
                assert!(ours.contains(&k), "{event}: an output item lacks `{k}`");
            }
        }
    }
}

#[test]
fn text_matches_the_recorded_stream() {
    let rec = recorded(include_str!(
        "../../../testdata/responses/dotnet_streaming_text.json"
    ));
    let rec_frames = frames(&rec);
    let theirs = accumulate(&rec);
    // The same answer, in the same pieces.
    let mut events: Vec<StreamEvent> = rec_frames
        .iter()
        .filter(|(e, _)| e == "response.output_text.delta")
        .map(|(_, d)| StreamEvent::TextDelta {
            text: d["delta"].as_str().unwrap().into(),
        })
        .collect();
    let usage = Usage {
        input_tokens: 11,
        output_tokens: 10,
        ..Usage::default()
    };
    events.push(StreamEvent::Usage(usage));
    events.push(done(FinishReason::Stop, usage));
    let body = encode(events);
    let ours = accumulate(&body);
    assert_eq!(ours.types, theirs.types);
    assert_same_fields(&rec_frames, &frames(&body));
    assert_eq!(ours.done.len(), 1);
    assert_eq!(
        text_of_item(&ours.done[0]),
        "Hello! How can I assist you today?"
    );
    assert_eq!(ours.last["status"], "completed");
    assert_eq!(ours.last["usage"], theirs.last["usage"]);
}

#[test]
fn a_function_call_matches_the_recorded_stream() {
    let rec = recorded(include_str!(
        "../../../testdata/responses/dotnet_streaming_function_call.json"
    ));
    let rec_frames = frames(&rec);
    let theirs = accumulate(&rec);
    let call = &theirs.done[0];
    let mut events = vec![StreamEvent::ToolCallStart {
        index: 0,
        id: call["call_id"].as_str().unwrap().into(),
        name: call["name"].as_str().unwrap().into(),
    }];
    events.extend(
        rec_frames
            .iter()
            .filter(|(e, _)| e == "response.function_call_arguments.delta")
            .map(|(_, d)| StreamEvent::ToolCallDelta {
                index: 0,
                json: d["delta"].as_str().unwrap().into(),
            }),
    );
    events.push(done(FinishReason::ToolUse, Usage::default()));
    let body = encode(events);
    let ours = accumulate(&body);
    assert_eq!(ours.types, theirs.types);
    assert_same_fields(&rec_frames, &frames(&body));
    let mine = &ours.done[0];
    for k in ["type", "status", "arguments", "call_id", "name"] {
        assert_eq!(mine[k], call[k], "{k}");
    }
}

#[test]
fn reasoning_then_text_then_a_tool_call() {
    let body = encode(vec![
        StreamEvent::ThinkingDelta {
            text: "Let me ".into(),
        },
        StreamEvent::ThinkingDelta {
            text: "look.".into(),
        },
        StreamEvent::TextDelta {
            text: "Checking.".into(),
        },
        StreamEvent::ToolCallStart {
            index: 0,
            id: "call_1".into(),
            name: "shell".into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            json: "{\"command\":[\"ls\"]}".into(),
        },
        StreamEvent::ToolCallStart {
            index: 1,
            id: "call_2".into(),
            name: "shell".into(),
        },
        done(FinishReason::ToolUse, Usage::default()),
    ]);
    let acc = accumulate(&body);
    assert_eq!(
        acc.types,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let kinds: Vec<&str> = acc
        .done
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["reasoning", "message", "function_call", "function_call"]
    );
    assert_eq!(acc.done[0]["id"], "rs_mythos_7_0");
    assert_eq!(
        acc.done[0]["summary"],
        json!([{"type": "summary_text", "text": "Let me look."}])
    );
    assert_eq!(acc.done[2]["call_id"], "call_1");
    assert_eq!(
        acc.done[3]["arguments"], "{}",
        "a call without arguments has an empty object"
    );
    assert_eq!(acc.last["id"], "resp_mythos_7");
}

#[test]
fn the_token_limit_ends_incomplete() {
    let body = encode(vec![
        StreamEvent::TextDelta {
            text: "Once".into(),
        },
        done(
            FinishReason::MaxTokens,
            Usage {
                input_tokens: 5,
                output_tokens: 1,
                cache_read_input_tokens: 3,
                cache_creation_input_tokens: 0,
                web_searches: 0,
            },
        ),
    ]);
    let acc = accumulate(&body);
    assert_eq!(acc.types.last().unwrap(), "response.incomplete");
    assert!(!acc.types.iter().any(|t| t == "response.completed"));
    assert_eq!(acc.last["status"], "incomplete");
    assert_eq!(
        acc.last["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(acc.done[0]["status"], "incomplete");
    assert_eq!(
        acc.last["usage"],
        json!({"input_tokens": 8, "input_tokens_details": {"cached_tokens": 3},
               "output_tokens": 1, "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": 9})
    );
}

#[test]
fn a_failure_after_the_start_ends_failed() {
    let at = mythos_protocol::clock::now_unix_ms() + 4_000;
    let body = encode(vec![
        StreamEvent::TextDelta { text: "Hal".into() },
        StreamEvent::Error {
            kind: ErrorKind::RateLimited,
            message: "every provider is rate limited".into(),
            retry_at_unix_ms: Some(at),
        },
    ]);
    let acc = accumulate(&body);
    assert_eq!(acc.types.last().unwrap(), "response.failed");
    assert!(!acc.types.iter().any(|t| t == "response.completed"));
    assert_eq!(acc.last["status"], "failed");
    assert_eq!(acc.last["error"]["code"], "rate_limit_exceeded");
    // Codex waits as long as the message says before it retries.
    let message = acc.last["error"]["message"].as_str().unwrap();
    assert!(message.contains("try again in 4s"), "{message}");
    assert_eq!(acc.last["output"][0]["status"], "incomplete");
    // The half message is never given as finished: Codex would keep it in its history and
    // send it again beside the retried turn's answer (found by a helper reading codex-rs).
    assert!(acc.done.is_empty(), "{:?}", acc.types);
    assert!(
        !acc.types.iter().any(|t| t.ends_with(".done")),
        "{:?}",
        acc.types
    );
}

#[test]
fn a_restart_after_text_fails_but_after_reasoning_goes_on() {
    let restart = || StreamEvent::Rerouted {
        from: "a".into(),
        to: "b".into(),
        reason: "stalled".into(),
        mode: RerouteMode::Restart,
    };
    let body = encode(vec![
        StreamEvent::TextDelta { text: "Hal".into() },
        restart(),
    ]);
    let acc = accumulate(&body);
    assert_eq!(acc.types.last().unwrap(), "response.failed");
    assert_eq!(acc.last["error"]["code"], "server_error");

    let body = encode(vec![
        StreamEvent::ThinkingDelta { text: "hm".into() },
        restart(),
        StreamEvent::TextDelta { text: "Hi".into() },
        done(FinishReason::Stop, Usage::default()),
    ]);
    let acc = accumulate(&body);
    assert_eq!(acc.types.last().unwrap(), "response.completed");
    assert_eq!(acc.done.len(), 2);
    assert_eq!(text_of_item(&acc.done[1]), "Hi");
}

#[test]
fn a_vanished_router_ends_failed() {
    let (mut enc, mut out) = ResponsesEncoder::start(&head(), Map::new());
    enc.vanished(&mut out);
    let acc = accumulate(&out);
    assert_eq!(acc.types.last().unwrap(), "response.failed");
    assert_eq!(acc.last["status"], "failed");
}

#[test]
fn a_whole_answer_numbers_items_as_the_stream_does() {
    let mut answer = Answer::default();
    answer.blocks = vec![
        Block::Thinking {
            text: String::new(),
            signature: Some("sig".into()),
        },
        Block::Thinking {
            text: "plan".into(),
            signature: None,
        },
        Block::Thinking {
            text: String::new(),
            signature: None,
        },
        Block::Text("ok".into()),
        Block::Tool {
            id: "c1".into(),
            name: "f".into(),
            args: String::new(),
        },
    ];
    let got = items(&answer, 3, &super::stream::Meta::new(&head(), Map::new()));
    assert_eq!(
        got.len(),
        4,
        "empty thinking without a signature is no item"
    );
    // A bare signature is an item: Anthropic needs it back with the turn.
    assert!(
        matches!(&got[0], Item::Reasoning { id, signature: Some(s), .. }
                     if id == "rs_mythos_3_0" && s == "sig")
    );
    assert!(matches!(&got[1], Item::Reasoning { id, .. } if id == "rs_mythos_3_1"));
    assert!(matches!(&got[2], Item::Message { id, .. } if id == "msg_mythos_3_2"));
    assert!(matches!(&got[3], Item::Call { args, .. } if args == "{}"));
}

/// Anthropic can sign thinking it streamed no text of: the signature still reaches the client
/// as a reasoning item's `encrypted_content` (without it, the turn goes back to Anthropic
/// without its thinking block), and the item has no summary.
#[test]
fn a_signature_without_thinking_text_is_a_reasoning_item() {
    let body = encode(vec![
        StreamEvent::ThinkingSignature {
            signature: "c2ln".into(),
        },
        StreamEvent::TextDelta { text: "Hi".into() },
        done(FinishReason::Stop, Usage::default()),
    ]);
    let acc = accumulate(&body);
    assert_eq!(acc.types.last().unwrap(), "response.completed");
    assert_eq!(acc.done.len(), 2, "{:?}", acc.types);
    let reasoning = &acc.done[0];
    assert_eq!(reasoning["type"], "reasoning");
    assert_eq!(reasoning["id"], "rs_mythos_7_0");
    assert_eq!(reasoning["summary"], json!([]));
    assert_eq!(
        reasoning["encrypted_content"],
        format!("{SIGNATURE_PREFIX}c2ln")
    );
    assert_eq!(text_of_item(&acc.done[1]), "Hi");
    // The finished response carries it too, in the same place.
    assert_eq!(acc.last["output"][0], *reasoning);
    // No summary events for a summary that is not there.
    assert!(!acc.types.iter().any(|t| t.contains("reasoning_summary")));
}

/// A long wait (held tool calls, a queue) keeps the stream alive with an event Codex's idle
/// timer sees, numbered in sequence; not a comment its event parser would drop.
#[test]
fn keepalive_is_an_event_in_sequence() {
    let (mut enc, mut out) = ResponsesEncoder::start(&head(), Map::new());
    enc.keepalive(&mut out);
    let text = String::from_utf8(out.to_vec()).unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.len(), 3, "{text}");
    assert!(
        frames[2].starts_with("event: response.in_progress\n"),
        "{text}"
    );
    let data: Value = serde_json::from_str(
        frames[2]
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data["sequence_number"], 2);
    assert_eq!(data["response"]["status"], "in_progress");
    assert!(!text.contains(": keep-alive"));
}

/// Codex's `local_shell` tool, offered upstream as a function: the model's call comes back as
/// the `local_shell_call` item Codex runs, with its `exec` action. Dropped before, the model had
/// no shell, and a history with one had a tool output answering no call (a `400` upstream).
#[test]
fn a_local_shell_call_comes_back_as_codex_reads_it() {
    let (mut enc, mut out) = ResponsesEncoder::start_with(&head(), Map::new(), Vec::new(), true);
    for ev in [
        StreamEvent::ToolCallStart {
            index: 0,
            id: "call_9".into(),
            name: super::request::LOCAL_SHELL.into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            json: r#"{"command":["rg","-n","fn main"],"#.into(),
        },
        StreamEvent::ToolCallDelta {
            index: 0,
            json: r#""working_directory":"/src","timeout_ms":5000}"#.into(),
        },
        done(FinishReason::ToolUse, Usage::default()),
    ] {
        enc.event(ev, &mut out);
    }
    let frames = frames(&out);
    let types: Vec<&str> = frames.iter().map(|(e, _)| e.as_str()).collect();
    assert!(
        !types.iter().any(|t| t.contains("function_call")),
        "{types:?}"
    );
    let (_, done_item) = frames
        .iter()
        .find(|(e, _)| e == "response.output_item.done")
        .expect("the call's item");
    let item = &done_item["item"];
    assert_eq!(item["type"], "local_shell_call");
    assert_eq!(item["call_id"], "call_9");
    assert_eq!(item["status"], "completed");
    assert_eq!(
        item["action"],
        json!({"type": "exec", "command": ["rg", "-n", "fn main"], "timeout_ms": 5000,
               "working_directory": "/src", "env": {}, "user": null})
    );
    // The finished response lists it the same way.
    let (_, completed) = frames.last().unwrap();
    assert_eq!(completed["response"]["output"][0], *item);
    // A command given as one line runs through a shell.
    assert_eq!(
        super::request::shell_action(r#"{"command":"ls | wc -l"}"#)["command"],
        json!(["bash", "-lc", "ls | wc -l"])
    );
}
