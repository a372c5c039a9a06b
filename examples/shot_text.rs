//! Renders the app's Your text view on a run, with a feature picked at the position where it
//! is strongest and a steered continuation, to a PNG (what `docs/app-text.png` is), through
//! egui_kittest on wgpu (any adapter; lavapipe without a GPU):
//!
//!     cargo run --release --example shot_text -- RUN "PROMPT" HEAD,FEATURE OUT.png \
//!         [TIMES] [clamp] [new-only]
//!
//! TIMES is the strength in multiples of the feature's largest dashboard activation (4).
//! With ANSWER (and AGAINST) in the environment, the features are ranked by that next token
//! after the last position instead, and the picked feature is removed (its exact effect on
//! the answer shown) instead of steered with (what `docs/app-answer.png` is). With UPSTREAM
//! (a source position, or empty for the source giving the most) the picked feature's DFA
//! from that source is taken apart instead (What wrote what it reads), at position AT if
//! given (what `docs/app-upstream.png` is), and with THROUGH=LAYER,HEAD,FROM (a head listed
//! there, reading from FROM) that head's term a step further up; with FOLLOW too, followed
//! up through the strongest heads ("Follow the strongest head", `docs/app-upstream-followed.png`).
//! With PROMPTS=FILE (`rank --prompts`' lines), that prompt set ranked over instead (EXACT:
//! the listed features' exact changes too, `docs/app-prompts.png`); with
//! SPREAD=strongest, largest or answer too, the feature's DFA taken apart upstream over it
//! from that source of each prompt instead (FOLLOW: followed up), `docs/app-spread.png`.
//! With SPLIT, the Features view on the feature instead, its top examples taken apart
//! upstream ("Take its top examples apart"), `docs/app-split.png`.
use std::time::{Duration, Instant};

use attn_saes::app::{AttnSaesApp, Command, UiState, View};
use attn_saes::live::Answer;
use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

fn wait(h: &mut Harness<'static, AttnSaesApp>, what: &str, done: impl Fn(&AttnSaesApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "timed out waiting for {what}: {:?}",
            h.state().messages
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether what was asked has arrived (or failed).
fn settled<T>(state: Option<&Answer<T>>) -> bool {
    state.is_some_and(|s| !matches!(s, Answer::Computing))
}

/// Renders the app to `out`.
fn save(h: &mut Harness<'static, AttnSaesApp>, out: &str) {
    h.run_steps(3);
    h.render()
        .expect("render")
        .save(out)
        .expect("write the PNG");
    println!("{out}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: shot_text RUN PROMPT HEAD,FEATURE OUT.png [TIMES] [clamp] [new-only]");
        std::process::exit(2);
    };
    let [run, prompt, pick, out, rest @ ..] = args.as_slice() else {
        usage()
    };
    let Some((head, feature)) = pick
        .split_once(',')
        .and_then(|(h, f)| Some((h.parse::<usize>().ok()?, f.parse::<usize>().ok()?)))
    else {
        usage()
    };
    let times: f32 = rest.first().and_then(|t| t.parse().ok()).unwrap_or(4.0);
    let mut app = AttnSaesApp::with_state(UiState::default());
    app.push(Command::OpenPath(run.into()));
    let mut h = Harness::builder()
        .with_size(egui::Vec2::new(1400.0, 1200.0))
        .wgpu()
        .build_eframe(move |_| app);
    h.run_steps(3);
    // SPLIT: the Features view on the feature instead, its top examples taken apart
    // ("Take its top examples apart", for a dashboard file without the split), the prompt
    // unused (what `docs/app-split.png` is).
    if std::env::var("SPLIT").is_ok() {
        h.state_mut().ui.view = View::Features;
        (h.state_mut().ui.features).head = head;
        h.run_steps(3);
        h.state_mut().ui.features.feature = Some(feature);
        h.run_steps(3);
        let button = "Take its top examples apart";
        h.get_by_label(button).scroll_to_me();
        h.run_steps(20);
        h.get_by_label(button).click_accesskit();
        let asked = Instant::now();
        h.run_steps(1);
        wait(&mut h, "the split over the top examples", |a| {
            settled(a.native.split.as_ref().map(|s| &s.state))
        });
        eprintln!(
            "the split over the top examples arrived {:.2} s after the click",
            asked.elapsed().as_secs_f64()
        );
        h.run_steps(2);
        h.get_by_label("What wrote what it reads").scroll_to_me();
        h.run_steps(20);
        return save(&mut h, out);
    }
    h.state_mut().ui.view = View::Text;
    h.state_mut().ui.text.prompt = prompt.clone();
    h.run_steps(2);
    h.get_by_label("Run").click();
    wait(&mut h, "the analysis", |a| a.native.analysis.is_some());
    h.run_steps(2);
    let a = h.state().native.analysis.as_deref().unwrap();
    let strongest = (0..a.len())
        .max_by(|&x, &y| {
            let act = |p| a.activation(head, feature, p);
            act(x).total_cmp(&act(y))
        })
        .unwrap();
    // PROMPTS=FILE: that prompt set ranked over (Which features matter over a prompt set),
    // nothing picked (what `docs/app-prompts.png` is).
    if let Ok(file) = std::env::var("PROMPTS") {
        h.state_mut().ui.text.prompt_set = std::fs::read_to_string(&file).expect("the prompts");
        h.run_steps(2);
        if let Ok(from) = std::env::var("SPREAD") {
            let from = serde_json::from_value(serde_json::Value::String(from))
                .expect("SPREAD: strongest, largest or answer");
            let text = &mut h.state_mut().ui.text;
            text.spread_feature = Some((head, feature));
            (text.spread_from, text.spread_follow) = (from, std::env::var("FOLLOW").is_ok());
            h.run_steps(2);
            h.get_by_label("Take it apart over the set")
                .click_accesskit();
            let asked = Instant::now();
            h.run_steps(1);
            wait(&mut h, "the spread over the prompts", |a| {
                settled(a.native.spread.as_ref().map(|r| &r.state))
            });
            eprintln!(
                "the spread over the prompts arrived {:.2} s after the click",
                asked.elapsed().as_secs_f64()
            );
            h.run_steps(2);
            let heading = "Where a feature reads from, over the set";
            h.get_by_label(heading).scroll_to_me();
            h.run_steps(20); // the scroll is animated
            return save(&mut h, out);
        }
        h.get_by_label("Rank over the set").click_accesskit();
        let asked = Instant::now();
        h.run_steps(1);
        wait(&mut h, "the ranking over the prompts", |a| {
            settled(a.native.prompts.as_ref().map(|r| &r.state))
        });
        eprintln!(
            "the ranking over the prompts arrived {:.2} s after the click",
            asked.elapsed().as_secs_f64()
        );
        // EXACT: then the listed features' exact changes.
        if std::env::var("EXACT").is_ok() {
            h.run_steps(2);
            h.get_by_label("Remove each for the exact change")
                .click_accesskit();
            let asked = Instant::now();
            h.run_steps(1);
            wait(&mut h, "the exact changes", |a| {
                let exact = a.native.prompts.as_ref().and_then(|p| p.exact.as_ref());
                settled(exact.map(|e| &e.0))
            });
            eprintln!(
                "the exact changes arrived {:.2} s after the click",
                asked.elapsed().as_secs_f64()
            );
        }
        return save(&mut h, out);
    }
    if let Ok(answer) = std::env::var("ANSWER") {
        let text = &mut h.state_mut().ui.text;
        text.rank_by_answer = true;
        text.answer = answer;
        text.against = std::env::var("AGAINST").unwrap_or_default();
        h.run_steps(2);
        h.get_by_label("Rank the features").click();
        h.run_steps(1);
        wait(&mut h, "the ranking", |a| {
            settled(a.native.ranking.as_ref().map(|r| &r.state))
        });
        let text = &mut h.state_mut().ui.text;
        (text.token, text.pick) = (Some(strongest), Some((head, feature)));
        h.run_steps(3);
        h.get_by_label("Remove it and run again").click_accesskit();
        h.run_steps(1);
        wait(&mut h, "the effect", |a| {
            settled(a.native.effect.as_ref().map(|e| &e.state))
        });
        return save(&mut h, out);
    }
    if let Ok(source) = std::env::var("UPSTREAM") {
        let at = std::env::var("AT").ok().and_then(|p| p.parse().ok());
        let p = at.unwrap_or(strongest);
        let text = &mut h.state_mut().ui.text;
        (text.token, text.pick) = (Some(p), Some((head, feature)));
        if let Ok(source) = source.parse::<usize>() {
            text.upstream_source = Some(((p, head, feature), source));
        }
        h.run_steps(3);
        let button = match std::env::var("FOLLOW") {
            Ok(_) => "Follow the strongest head",
            Err(_) => "Take it apart",
        };
        h.get_by_label(button).click_accesskit();
        let asked = Instant::now();
        h.run_steps(1);
        wait(&mut h, "the upstream split", |a| {
            settled(a.native.upstream.as_ref().map(|u| &u.state))
        });
        eprintln!(
            "the split arrived {:.0} ms after the click",
            asked.elapsed().as_secs_f64() * 1e3
        );
        // THROUGH=LAYER,HEAD,FROM: that head's term read from FROM a step further up, as
        // clicking the position in its "reading from" does.
        if let Some(step) = std::env::var("THROUGH").ok().and_then(|t| {
            let n: Vec<usize> = t.split(',').filter_map(|x| x.parse().ok()).collect();
            (n.len() == 3).then(|| (n[0], n[1], n[2]))
        }) {
            let label = {
                let Some(Answer::Ready(u)) = h.state().native.upstream.as_ref().map(|u| &u.state)
                else {
                    panic!("no split to take further")
                };
                let writer = attn_saes::live::Writer::Head {
                    layer: step.0,
                    head: step.1,
                };
                let part = u
                    .parts
                    .iter()
                    .find(|w| w.writer == writer)
                    .expect("that head");
                let strings = &h.state().native.analysis.as_deref().unwrap().strings;
                format!(
                    "{} {:?} {:+.4}",
                    step.2, strings[step.2], part.by_source[step.2]
                )
            };
            h.get_by_label(&label).click_accesskit();
            h.run_steps(1);
            wait(&mut h, "the split further up", |a| {
                (a.native.upstream.as_ref()).is_some_and(|u| {
                    !u.ask.through.is_empty() && !matches!(u.state, Answer::Computing)
                })
            });
        }
        return save(&mut h, out);
    }
    let text = &mut h.state_mut().ui.text;
    text.token = Some(strongest);
    text.pick = Some((head, feature));
    text.steer_times = times;
    text.steer_clamp = rest.iter().any(|x| x == "clamp");
    text.steer_new_only = rest.iter().any(|x| x == "new-only");
    h.run_steps(3);
    h.get_by_label("Continue the text").click_accesskit();
    h.run_steps(1);
    wait(&mut h, "the continuation", |a| {
        a.native
            .steer
            .as_ref()
            .is_some_and(|x| matches!(x.state, Answer::Ready(_)))
    });
    save(&mut h, out);
}
