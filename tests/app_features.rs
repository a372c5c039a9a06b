//! The Features view (src/app/features.rs) driven with egui_kittest over a real dashboard:
//! head and feature selection, keyboard navigation, the DFA panel, and a snapshot.

mod common;

use std::sync::OnceLock;

use attn_saes::app::features::{
    ExamplesAsk, FeaturesState, LoadedDashboard, features_ui, search_id,
};
use attn_saes::dashboard::format::{ExampleGroup, HeadData, OwnedDashboardFile};
use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};

type State = (LoadedDashboard, FeaturesState);

/// The dashboard of a tiny run (4 heads x 32 features), built once for all tests.
fn dashboard_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = common::TempDir::new("attn-saes-app-features", "dash");
        let run = common::run_with_dashboard(&dir, 30);
        std::fs::read(run.join("dashboard.safetensors")).unwrap()
    })
}

/// One head decoded independently of the viewer.
fn head(h: usize) -> HeadData {
    OwnedDashboardFile::new(dashboard_bytes().to_vec())
        .unwrap()
        .head(h)
        .unwrap()
}

fn harness() -> Harness<'static, State> {
    let d =
        LoadedDashboard::new("dashboard.safetensors".into(), dashboard_bytes().to_vec()).unwrap();
    harness_on(d, FeaturesState::default(), Vec::new())
}

/// The Features view on `d` from `state`, with `compared` runs, rendered on wgpu.
fn harness_on(
    d: LoadedDashboard,
    state: FeaturesState,
    compared: Vec<attn_saes::app::curves::Compared>,
) -> Harness<'static, State> {
    harness_asking(d, state, compared, false)
}

/// [`harness_on`], offering the effect on the top examples (as the desktop app does with
/// a model at hand) when `live`.
fn harness_asking(
    d: LoadedDashboard,
    state: FeaturesState,
    compared: Vec<attn_saes::app::curves::Compared>,
    live: bool,
) -> Harness<'static, State> {
    Harness::builder()
        .with_size(egui::Vec2::new(1400.0, 900.0))
        .wgpu()
        .build_ui_state(
            move |ui, state: &mut State| {
                let ask = match live {
                    true => ExamplesAsk::Ask(None, None),
                    false => ExamplesAsk::Unavailable,
                };
                features_ui(ui, &mut state.0, &mut state.1, ask, &compared);
            },
            (d, state),
        )
}

/// Feature indices by density, highest first, ties by index: the list's default order.
fn density_order(head: &HeadData) -> Vec<usize> {
    let mut order: Vec<usize> = (0..head.features.len()).collect();
    order.sort_by(|&a, &b| {
        let (da, db) = (head.features[a].density, head.features[b].density);
        db.total_cmp(&da).then(a.cmp(&b))
    });
    order
}

/// Clicks `Head 2` in the heads panel.
fn open_head_2(h: &mut Harness<'static, State>) {
    h.get_by_label("Head 2").click();
    h.run_steps(2);
    assert_eq!(h.state().1.head, 2);
}

#[test]
fn clicking_a_head_and_a_feature_shows_its_dashboard() {
    if !common::renderer_available() {
        return;
    }
    let mut h = harness();
    open_head_2(&mut h);
    assert_eq!(
        h.state().1.feature,
        density_order(&head(2)).first().copied(),
        "a new head selects the first feature of the list"
    );
    h.get_by_label_contains("#3  ").click();
    h.run_steps(2);
    assert_eq!(h.state().1.feature, Some(3));
    let density = head(2).features[3].density;
    h.get_by_label(&format!("density {density:.3e}"));
    h.get_by_label("Head 2 · Feature 3");
    // The features closest to it by decoder direction (from the file's decoder rows, as
    // decoded independently), each a button; the first selects that feature.
    let closest = head(2).closest(3, 6);
    assert_eq!(closest.len(), 6);
    for &(g, cos) in &closest {
        h.get_by_label(&format!("#{g} {cos:.2}"));
    }
    let (g, cos) = closest[0];
    h.get_by_label(&format!("#{g} {cos:.2}")).click();
    h.run_steps(2);
    assert_eq!(h.state().1.feature, Some(g));
    h.get_by_label(&format!("Head 2 · Feature {g}"));
}

/// The features a feature fires with (from the file, decoded independently), each a button
/// named by head; one in another head opens that head at that feature.
#[test]
fn the_features_a_feature_fires_with_open_across_heads() {
    if !common::renderer_available() {
        return;
    }
    let mut h = harness();
    open_head_2(&mut h);
    let m = head(2).features.len();
    // A feature of head 2 that fires with one of another head.
    let (f, (g, r)) = (0..m)
        .find_map(|f| {
            let with = &head(2).features[f].cofiring;
            with.iter()
                .find(|&&(g, _)| g as usize / m != 2)
                .map(|&x| (f, x))
        })
        .expect("a head-2 feature that fires with another head's");
    h.get_by_label_contains(&format!("#{f}  ")).click();
    h.run_steps(2);
    h.get_by_label("fires with");
    for &(g, r) in &head(2).features[f].cofiring {
        h.get_by_label(&format!("h{} #{} {r:.2}", g as usize / m, g as usize % m));
    }
    let (to_head, to_feature) = (g as usize / m, g as usize % m);
    h.get_by_label(&format!("h{to_head} #{to_feature} {r:.2}"))
        .click();
    h.run_steps(3);
    assert_eq!(
        (h.state().1.head, h.state().1.feature),
        (to_head, Some(to_feature))
    );
    h.get_by_label(&format!("Head {to_head} · Feature {to_feature}"));
}

/// Sorted by effect on the loss: the list is in order of |effect| (from the file, decoded
/// independently), the rows and the header give the effect per 1000 tokens, and down the
/// list the arrow keys follow that order.
#[test]
fn sorting_by_effect_on_the_loss_orders_the_list_by_the_files_estimates() {
    use attn_saes::app::features::SortBy;
    if !common::renderer_available() {
        return;
    }
    let mut h = harness();
    open_head_2(&mut h);
    h.get_by_label("sort").click();
    h.run_steps(2);
    h.get_by_label("Effect on the loss").click();
    h.run_steps(2);
    assert_eq!(h.state().1.sort, SortBy::Effect);
    let data = head(2);
    let file = OwnedDashboardFile::new(dashboard_bytes().to_vec()).unwrap();
    let effects = file
        .meta
        .effects
        .clone()
        .expect("the run's dashboard has effects");
    let effect = |f: usize| data.features[f].effect.unwrap();
    let mut order: Vec<usize> = (0..data.features.len()).collect();
    order.sort_by(|&a, &b| effect(b).abs().total_cmp(&effect(a).abs()).then(a.cmp(&b)));
    assert!(effect(order[0]) != 0.0);
    // The list keeps its selection; the first row is the strongest feature.
    h.key_press(egui::Key::Home);
    h.run_steps(2);
    let first = order[0];
    let per_k = effects.per_thousand(effect(first));
    h.get_by_label_contains(&format!("#{first}  {per_k:+.3}/1k"));
    h.get_by_label_contains(&format!("#{first}  {per_k:+.3}/1k"))
        .click();
    h.run_steps(2);
    assert_eq!(h.state().1.feature, Some(first));
    h.get_by_label(&format!("loss without it {per_k:+.4} per 1000 tokens"));
    h.key_press(egui::Key::ArrowDown);
    h.run_steps(2);
    assert_eq!(h.state().1.feature, Some(order[1]));
}

/// "copy" puts the feature on the clipboard as text: its numbers and each top example
/// within the context shown, the target in `[[ ]]` (tokens and windows from the file decoded
/// here).
#[test]
fn copy_puts_the_feature_and_its_top_examples_on_the_clipboard() {
    if !common::renderer_available() {
        return;
    }
    let mut h = harness();
    open_head_2(&mut h);
    h.get_by_label_contains("#3  ").click();
    h.run_steps(2);
    h.get_by_label("copy").click();
    h.step();
    let copied: Vec<String> = (h.output().platform_output.commands.iter())
        .filter_map(|c| match c {
            egui::OutputCommand::CopyText(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(copied.len(), 1, "{copied:?}");
    let file = OwnedDashboardFile::new(dashboard_bytes().to_vec()).unwrap();
    let f = &head(2).features[3];
    let mut want = format!(
        "head 2 feature 3 (gpt2_tiny layer 1): density {:.3e}, max activation {:.3}",
        f.density, f.max_activation
    );
    let tops: Vec<_> = f
        .examples
        .iter()
        .filter(|e| e.group == ExampleGroup::Top)
        .collect();
    assert!(!tops.is_empty());
    for e in tops {
        let window = &file.windows[e.window as usize];
        let t = e.target as usize;
        let shown: String = (t.saturating_sub(12)..(t + 13).min(window.len()))
            .map(|p| {
                let token = file.token(window[p]);
                if p == t {
                    format!("[[{token}]]")
                } else {
                    token
                }
            })
            .collect();
        want.push_str(&format!("\n{:>8.3}  {shown}", e.activation));
    }
    let copied = &copied[0];
    let (first, rest) = copied.split_once('\n').unwrap();
    let (want_first, want_rest) = want.split_once('\n').unwrap();
    assert!(first.starts_with(want_first), "{first}");
    assert!(first.contains("loss without it "), "{first}");
    assert_eq!(rest, format!("{want_rest}\n"));
}

/// The context slider reaches the whole window (the dashboard's context size; it stopped
/// at ±64 tokens, short of a 128-token window for a late target), and no further.
#[test]
fn the_context_slider_reaches_the_whole_window() {
    if !common::renderer_available() {
        return;
    }
    let d =
        LoadedDashboard::new("dashboard.safetensors".into(), dashboard_bytes().to_vec()).unwrap();
    assert_eq!(d.file.meta.context_size, 16);
    let state = FeaturesState {
        crop: 500,
        ..Default::default()
    };
    let mut h = harness_on(d, state, Vec::new());
    h.run_steps(2);
    assert_eq!(h.state().1.crop, 16);
}

#[test]
fn arrow_keys_move_through_the_list_and_slash_focuses_search() {
    if !common::renderer_available() {
        return;
    }
    let mut h = harness();
    open_head_2(&mut h);
    let order = density_order(&head(2));
    assert_eq!(h.state().1.feature, Some(order[0]));
    h.key_press(egui::Key::ArrowDown);
    h.run_steps(2);
    assert_eq!(h.state().1.feature, Some(order[1]));
    h.key_press(egui::Key::ArrowDown);
    h.run_steps(2);
    assert_eq!(h.state().1.feature, Some(order[2]));
    h.key_press(egui::Key::ArrowUp);
    h.run_steps(2);
    assert_eq!(h.state().1.feature, Some(order[1]));

    // `/` focuses the search box; arrow keys then belong to the text field.
    h.key_press(egui::Key::Slash);
    h.run_steps(2);
    assert!(h.ctx.memory(|m| m.has_focus(search_id())));
    h.key_press(egui::Key::ArrowDown);
    h.run_steps(2);
    assert_eq!(h.state().1.feature, Some(order[1]));
    // Typing there filters the list.
    h.event(egui::Event::Text("zqxzqx".into()));
    h.run_steps(2);
    assert_eq!(h.state().1.search, "zqxzqx");
    h.get_by_label("0 of 32 features");
}

#[test]
fn dfa_panel_marks_the_largest_attribution() {
    if !common::renderer_available() {
        return;
    }
    let head2 = head(2);
    let (f, e) = density_order(&head2)
        .into_iter()
        .find_map(|f| {
            let top = head2.features[f]
                .examples
                .iter()
                .find(|e| e.group == ExampleGroup::Top && !e.dfa.is_empty())?;
            Some((f, top))
        })
        .expect("a live feature with a top example");
    // The first position holding the largest attribution.
    let mut argmax = 0;
    for (p, &v) in e.dfa.iter().enumerate() {
        if v > e.dfa[argmax] {
            argmax = p;
        }
    }
    let mut h = harness();
    open_head_2(&mut h);
    h.state_mut().1.feature = Some(f);
    h.run_steps(2);
    h.get_by_label(&format!("Head 2 · Feature {f}"));
    // A label's text is its AccessKit value.
    let label = h
        .get_by_label_contains(&format!("max attribution at position {argmax} ("))
        .accesskit_node()
        .value()
        .unwrap_or_default();
    // ... and says what kind of source it is.
    let file = OwnedDashboardFile::new(dashboard_bytes().to_vec()).unwrap();
    let kind = attn_saes::dashboard::sources::classify(
        &file.windows[e.window as usize],
        e.target as usize,
        argmax,
    );
    assert!(label.ends_with(&format!(" · {}", kind.label())), "{label}");
    h.get_by_label_contains("sum of DFA ");
}

/// With `dashboard --interval-dfa`, an interval group's example has a DFA button: clicked,
/// the DFA panel shows that example (its group, target, largest attribution and sum, the
/// file's values).
#[test]
fn an_interval_examples_dfa_button_shows_its_attribution() {
    if !common::renderer_available() {
        return;
    }
    let dir = common::TempDir::new("attn-saes-app-features", "interval-dfa");
    let run = common::run_with_dashboard(&dir, 30);
    // The run's dashboards rebuilt with and without the flag.
    let build = |name: &str, flag: &[&str]| {
        let file = run.join(name);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attn-saes"))
            .args(["--device", "cpu", "dashboard", "--run"])
            .arg(&run)
            .args(flag)
            .arg("--out")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        std::fs::read(&file).unwrap()
    };
    let bytes = build("with.safetensors", &["--interval-dfa"]);
    let plain = build("without.safetensors", &[]);
    let head2 = OwnedDashboardFile::new(bytes.clone())
        .unwrap()
        .head(2)
        .unwrap();
    // A live feature's interval example from the highest group that has one.
    let (f, j) = density_order(&head2)
        .into_iter()
        .find_map(|f| {
            let examples = &head2.features[f].examples;
            let j = (0..examples.len()).rev().find(|&j| {
                matches!(examples[j].group, ExampleGroup::Interval(_))
                    && !examples[j].dfa.is_empty()
            })?;
            Some((f, j))
        })
        .expect("a live feature with an interval example");
    let e = &head2.features[f].examples[j];
    let ExampleGroup::Interval(bin) = e.group else {
        unreachable!()
    };
    // The Features view on `bytes` at head 2's feature f, the example's group opened.
    let opened = |bytes: Vec<u8>| {
        let d = LoadedDashboard::new("dashboard.safetensors".into(), bytes).unwrap();
        let mut h = harness_on(d, FeaturesState::default(), Vec::new());
        open_head_2(&mut h);
        h.state_mut().1.feature = Some(f);
        h.run_steps(2);
        h.get_by_label_contains(&format!("Interval {bin}: "))
            .click_accesskit();
        // Until the group has opened (it animates).
        h.run();
        h
    };
    let mut h = opened(bytes);
    // The group's examples in file order: this one is the last of its group.
    let in_group = (head2.features[f].examples.iter())
        .filter(|x| x.group == e.group)
        .count();
    let buttons: Vec<_> = h.query_all_by_label("DFA").collect();
    let tops = (head2.features[f].examples.iter())
        .filter(|x| x.group == ExampleGroup::Top)
        .count();
    assert_eq!(
        buttons.len(),
        tops + in_group,
        "a DFA button on each example shown"
    );
    buttons.last().unwrap().click_accesskit();
    h.run_steps(2);
    assert_eq!(h.state().1.example, Some(j));
    h.get_by_label_contains(&format!(
        "interval {bin} example · target position {} (",
        e.target
    ));
    let mut argmax = 0;
    for (p, &v) in e.dfa.iter().enumerate() {
        if v > e.dfa[argmax] {
            argmax = p;
        }
    }
    h.get_by_label_contains(&format!("max attribution at position {argmax} ("));
    let sum: f32 = e.dfa.iter().sum();
    h.get_by_label(&format!("sum of DFA {sum:.3}"));
    // Built without it: the same examples, no DFA on the interval ones.
    let h = opened(plain);
    assert_eq!(h.query_all_by_label("DFA").count(), tops);
    assert!(
        h.query_by_label_contains(&format!("{:.3}", e.activation))
            .is_some()
    );
}

/// The "reads from" filter lists the features most of whose top examples read from that
/// kind of source, the heads table shows each head's commonest pattern, and the DFA panel
/// says where the feature reads from.
#[test]
fn reads_from_filter_heads_column_and_dfa_line() {
    use attn_saes::app::features::ReadsFrom;
    use attn_saes::dashboard::sources::{SourceKind, feature_sources};
    if !common::renderer_available() {
        return;
    }
    let file = OwnedDashboardFile::new(dashboard_bytes().to_vec()).unwrap();
    let head2 = head(2);
    let reads: Vec<_> = head2
        .features
        .iter()
        .map(|fd| feature_sources(&file.windows, fd))
        .collect();
    // The kind most features of head 2 read from, and those features.
    let kind = SourceKind::ALL
        .into_iter()
        .max_by_key(|&k| reads.iter().filter(|r| r.main() == Some(k)).count())
        .unwrap();
    let of_kind: Vec<usize> = (0..reads.len())
        .filter(|&f| reads[f].main() == Some(kind))
        .collect();
    assert!(!of_kind.is_empty());

    let mut h = harness();
    open_head_2(&mut h);
    // Every head's cell, from the summary the file carries.
    for s in &file.meta.heads {
        let summary = s.reads_from.as_ref().unwrap();
        let text = match summary.top_pattern() {
            Some((k, share)) => format!("{} {:.0}%", k.short(), 100.0 * share),
            None => "elsewhere".into(),
        };
        assert!(
            h.query_all_by_label(&text).count() >= 1,
            "head {}: {text}",
            s.head
        );
    }
    // Choose the kind in the combo box.
    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "reads from")
        .click();
    h.run_steps(2);
    // The popup's entry (the heads table may hold a label of the same text).
    h.query_all_by_label(kind.label())
        .find(|n| n.accesskit_node().role() != egui::accesskit::Role::Label)
        .expect("the kind in the combo box's popup")
        .click();
    h.run_steps(2);
    assert_eq!(h.state().1.reads_from, ReadsFrom::Kind(kind));
    h.get_by_label(&format!("{} of 32 features", of_kind.len()));
    // The list keeps the density order within the kind; its first is selected.
    let first = density_order(&head2)
        .into_iter()
        .find(|f| of_kind.contains(f))
        .unwrap();
    h.state_mut().1.feature = Some(first);
    h.run_steps(2);
    h.get_by_label_contains(&format!("Reads from {}", reads[first].describe()));
}

/// The heads table's CE loss score of a head shows, on hover, its standard error in the
/// run's last evaluation, as the file's history records it.
#[test]
fn a_heads_ce_score_shows_its_standard_error_on_hover() {
    if !common::renderer_available() {
        return;
    }
    let file = OwnedDashboardFile::new(dashboard_bytes().to_vec()).unwrap();
    let e = file.meta.history.evals.last().unwrap();
    let mut h = harness();
    h.run_steps(2);
    for head in [0, 3] {
        let score = file.meta.heads[head].ce_score.unwrap();
        assert_eq!(score, e.per_head[head].ce_score);
        // The cell: the label of that text in the heads table's row of the head.
        let row = h.get_by_label(&format!("Head {head}")).rect();
        h.query_all_by_label(&format!("{score:.3}"))
            .find(|n| (n.rect().center().y - row.center().y).abs() < 2.0)
            .unwrap_or_else(|| panic!("head {head}'s CE cell"))
            .hover();
        h.run_steps(4);
        let se = e.per_head[head].ce_score_se.unwrap();
        h.get_by_label_contains(&format!(
            "CE loss score ± {se:.3}: its jackknife standard error over the {} windows of \
             the run's last evaluation (step {})",
            e.windows.unwrap(),
            e.step
        ));
    }
}

/// A file written before the heads' summaries: the column says "-" for a head until it is
/// opened, then what the head's features give.
#[test]
fn a_file_without_summaries_counts_a_head_when_it_is_opened() {
    use attn_saes::dashboard::format::Dashboard;
    use attn_saes::dashboard::sources::head_sources;
    if !common::renderer_available() {
        return;
    }
    let mut old = Dashboard::from_bytes(dashboard_bytes()).unwrap();
    for s in &mut old.meta.heads {
        (s.reads_from, s.attention) = (None, None);
    }
    let cell = |h: usize| {
        let s = head_sources(&old.windows, &old.heads[h]);
        match s.top_pattern() {
            Some((k, share)) => format!("{} {:.0}%", k.short(), 100.0 * share),
            None => "elsewhere".into(),
        }
    };
    let d = LoadedDashboard::new("old.safetensors".into(), old.to_bytes().unwrap()).unwrap();
    let mut h = harness_on(d, FeaturesState::default(), Vec::new());
    h.run_steps(3);
    // Head 0 is open; the three others are not.
    assert_eq!(h.query_all_by_label("-").count(), 3);
    h.get_by_label("Head 2").click();
    h.run_steps(3);
    assert_eq!(h.query_all_by_label("-").count(), 2);
    for head in [0, 2] {
        assert!(
            h.query_all_by_label(&cell(head)).count() >= 1,
            "head {head}"
        );
    }
}

#[test]
fn features_view_snapshot() {
    if !common::renderer_available() {
        return;
    }
    let mut h = harness();
    // The model name is the fixture's absolute path: keep the checkout's location out of
    // the picture.
    h.state_mut().0.file.meta.model.name = "gpt2_tiny".into();
    open_head_2(&mut h);
    h.run_steps(2);
    h.snapshot("features_view");
}

#[test]
fn a_corrupt_head_shows_its_error() {
    if !common::renderer_available() {
        return;
    }
    // Flip a byte of head 1's densities: the header and the other heads stay valid, and
    // the tensor's checksum fails when the viewer decodes head 1.
    let mut bytes = dashboard_bytes().to_vec();
    let (n, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let start = header.info("h1.density").unwrap().data_offsets.0;
    bytes[8 + n + start] ^= 0x55;
    let d = LoadedDashboard::new("corrupt.safetensors".into(), bytes).unwrap();
    let mut h = Harness::builder()
        .with_size(egui::Vec2::new(1400.0, 900.0))
        .build_ui_state(
            |ui, state: &mut State| {
                features_ui(
                    ui,
                    &mut state.0,
                    &mut state.1,
                    ExamplesAsk::Unavailable,
                    &[],
                );
            },
            (d, FeaturesState::default()),
        );
    h.get_by_label("Head 1").click();
    h.run_steps(2);
    assert!(h.state_mut().0.head(1).is_err());
    assert!(h.query_all_by_label_contains("h1.density").count() >= 1);
    h.get_by_label("Head 0").click();
    h.run_steps(2);
    assert!(h.state_mut().0.head(0).is_ok());
    h.get_by_label_contains("of 32 features");
}

/// With a compared run whose dashboard holds its SAE's decoder rows (another run of the same
/// model and layer), a feature's dashboard lists the 3 features of the same head closest to
/// it in that run: those `match`'s `closest_to` finds from the two SAEs' weights, with
/// their cosines. A compared SAE of another layer is not listed.
#[test]
fn a_compared_runs_closest_features_are_those_match_finds() {
    use attn_saes::app::curves::{Compared, ComparedSae};
    let dir = common::TempDir::new("attn-saes-app-features", "compare-a");
    let dir_b = common::TempDir::new("attn-saes-app-features", "compare-b");
    let (run, other) = (
        common::run_with_dashboard(&dir, 30),
        common::run_with_dashboard(&dir_b, 12),
    );
    let read = |run: &std::path::Path| {
        OwnedDashboardFile::new(std::fs::read(run.join("dashboard.safetensors")).unwrap()).unwrap()
    };
    let theirs = read(&other);
    let mut sae = ComparedSae::of(&theirs)
        .unwrap()
        .expect("the file holds decoder rows");
    let elsewhere = ComparedSae {
        hook_layer: sae.hook_layer + 1,
        ..sae.clone()
    };
    let mut compared = vec![
        Compared {
            name: "other".into(),
            history: theirs.meta.history.clone(),
            sae: Some(sae.clone()),
            source: None,
        },
        Compared {
            name: "other-layer".into(),
            history: theirs.meta.history.clone(),
            sae: Some(elsewhere),
            source: None,
        },
    ];
    let d = LoadedDashboard::new(
        "dashboard.safetensors".into(),
        std::fs::read(run.join("dashboard.safetensors")).unwrap(),
    )
    .unwrap();
    let (head, feature) = (2, 5);
    let state = FeaturesState {
        head,
        feature: Some(feature),
        ..FeaturesState::default()
    };
    let mut h = harness_on(d, state, compared.clone());
    h.run_steps(2);
    assert_eq!(
        (h.state().1.head, h.state().1.feature),
        (head, Some(feature))
    );
    let device = burn::prelude::Device::flex();
    let load = |run: &std::path::Path| {
        attn_saes::sae::BlockDiagSae::load(&run.join("sae"), &device).unwrap()
    };
    let want = attn_saes::sae::matching::closest_to(&load(&run), &load(&other), (head, feature), 3)
        .unwrap();
    let listed: Vec<String> = want
        .iter()
        .map(|c| format!("#{} {:.2}", c.feature, c.cosine))
        .collect();
    println!("closest in other: {}", listed.join("  "));
    assert!(h.query_by_label("closest in other").is_some());
    for entry in &listed {
        assert!(h.query_by_label(entry).is_some(), "{entry}");
    }
    // The other run's labels: the one of a listed feature beside it, not one of a feature
    // not listed.
    assert!(h.query_by_label_contains("“").is_none());
    let state = h.state().1.clone();
    sae.labels
        .set(head, want[1].feature as usize, "theirs")
        .unwrap();
    let unlisted = (0..).find(|f| want.iter().all(|c| c.feature as usize != *f));
    (sae.labels.set(head, unlisted.unwrap(), "not listed")).unwrap();
    compared[0].sae = Some(sae);
    let d = LoadedDashboard::new(
        "dashboard.safetensors".into(),
        std::fs::read(run.join("dashboard.safetensors")).unwrap(),
    )
    .unwrap();
    let mut h = harness_on(d, state, compared);
    h.run_steps(2);
    h.get_by_label("“theirs”");
    assert!(h.query_by_label("“not listed”").is_none());
    assert!(
        h.query_by_label_contains("closest in other-layer")
            .is_none()
    );
}

/// A dense SAE's dashboard: one block over every head, named so; a feature's header says
/// it is dense and the line under it gives the heads it writes, as computed here from the
/// run's SAE weights (the share of each head's part of its decoder row's squared norm).
#[test]
fn a_dense_saes_features_show_the_heads_they_write() {
    if !common::renderer_available() {
        return;
    }
    let dir = common::TempDir::new("attn-saes-app-features", "dense");
    let cfg = attn_saes::train::TrainConfig {
        dense: true,
        ..common::config(&dir, 30)
    };
    let run = common::run_with_dashboard_of(cfg);
    let bytes = std::fs::read(run.join("dashboard.safetensors")).unwrap();
    let mut d = LoadedDashboard::new("dense.safetensors".into(), bytes).unwrap();
    d.file.meta.model.name = "gpt2_tiny".into();
    let mut h = harness_asking(d, FeaturesState::default(), Vec::new(), true);
    h.run_steps(2);
    h.get_by_label_contains("dense: 128 features over 4 heads");
    // It can be used in Your text, and removed on its top examples (it was not offered).
    h.get_by_label("Use it in Your text");
    h.get_by_label("Remove it on its top examples");
    h.get_by_label("All heads");
    let f = h.state().1.feature.unwrap();
    h.get_by_label(&format!("Feature {f} · dense, all heads"));
    let sae = attn_saes::sae::BlockDiagSae::load(&run.join("sae"), &burn::prelude::Device::flex())
        .unwrap();
    let w_dec = sae.w_dec.into_data().try_to_vec::<f32>().unwrap(); // [1, 128, 64]
    let parts: Vec<f64> = (w_dec[f * 64..(f + 1) * 64].chunks(16))
        .map(|p| p.iter().map(|&x| x as f64 * x as f64).sum())
        .collect();
    let total: f64 = parts.iter().sum();
    let shares: Vec<f32> = parts.iter().map(|p| (p / total) as f32).collect();
    h.get_by_label("writes to");
    h.get_by_label(&attn_saes::dashboard::format::head_shares_text(&shares, 4));
    // The heads it reads: each head's share of its top examples' DFA by head, by size; and
    // the first top example's DFA by head under its DFA.
    use attn_saes::dashboard::format::{ExampleGroup, dfa_by_head_text, head_shares_text};
    let fd = h.state().0.file.head(0).unwrap().features[f].clone();
    let top: Vec<_> = (fd.examples.iter())
        .filter(|e| e.group == ExampleGroup::Top)
        .collect();
    let mut sums = [0f64; 4];
    for e in &top {
        for (k, x) in e.dfa_by_head.iter().enumerate() {
            sums[k] += (*x as f64).abs();
        }
    }
    let total: f64 = sums.iter().sum();
    let reads: Vec<f32> = sums.iter().map(|x| (x / total) as f32).collect();
    h.get_by_label_contains("reads through");
    let (writes, reads) = (head_shares_text(&shares, 4), head_shares_text(&reads, 4));
    assert!(h.query_all_by_label(&reads).count() > usize::from(reads == writes));
    h.get_by_label("by head");
    h.get_by_label(&dfa_by_head_text(&top[0].dfa_by_head, 4));
    h.snapshot("features_view_dense");
    // The list by the head each feature writes most, as the SAE's decoder rows say.
    let most = |g: usize| -> usize {
        let parts: Vec<f64> = (w_dec[g * 64..(g + 1) * 64].chunks(16))
            .map(|p| p.iter().map(|&x| x as f64 * x as f64).sum())
            .collect();
        (0..4)
            .max_by(|&a, &b| parts[a].total_cmp(&parts[b]))
            .unwrap()
    };
    h.get_by_label("writes most to");
    let mut listed = 0;
    for head in 0..4 {
        h.state_mut().1.writes_to = Some(head);
        h.run_steps(2);
        let want = (0..128).filter(|&g| most(g) == head).count();
        h.get_by_label(&format!("{want} of 128 features"));
        listed += want;
    }
    assert_eq!(listed, 128);
}

/// What wrote what a feature reads (`dashboard --upstream`, which the tests' run has): the
/// panel shows the file's split of the feature's top examples, decoded independently: how
/// many, the DFA mean, each listed writer's mean, name and spread, an earlier head's parts
/// by where it read from, and the others together. A file without it says how to add it.
#[test]
fn what_wrote_what_it_reads_shows_the_files_split_over_the_top_examples() {
    if !common::renderer_available() {
        return;
    }
    let head2 = head(2);
    let (f, u) = density_order(&head2)
        .into_iter()
        .find_map(|f| Some((f, head2.features[f].upstream.clone()?)))
        .expect("a feature with top examples taken apart");
    assert!(u.examples > 0 && !u.writers.is_empty());
    let mut h = harness();
    open_head_2(&mut h);
    h.state_mut().1.feature = Some(f);
    h.run_steps(2);
    h.get_by_label("What wrote what it reads");
    h.get_by_label(&format!(
        "Over its {} top examples: the DFA from the source, mean {:+.4}; by writer, the mean \
         (sd) [least, most]; an earlier head's, by where it read from:",
        u.examples, u.dfa
    ));
    for w in &u.writers {
        h.get_by_label(&w.writer.name());
        let mut said = format!("({:.4}) [{:+.4}, {:+.4}]", w.sd, w.min, w.max);
        if let Some([itself, bos, elsewhere]) = w.reading {
            said += &format!(
                "\nthe source itself {itself:+.4}, BOS {bos:+.4}, elsewhere {elsewhere:+.4}"
            );
        }
        assert!(
            !h.query_all_by_label(&said).collect::<Vec<_>>().is_empty(),
            "{said}"
        );
        let mean = format!("{:+.4}", w.mean);
        assert!(
            !h.query_all_by_label(&mean).collect::<Vec<_>>().is_empty(),
            "{mean}"
        );
    }
    assert!(
        u.writers.iter().any(|w| w.reading.is_some()),
        "a head listed"
    );
    if u.rest.0 > 0 {
        h.get_by_label(&format!("the other {} together", u.rest.0));
    }

    // The same file without it.
    let mut d = attn_saes::dashboard::Dashboard::from_bytes(dashboard_bytes()).unwrap();
    d.meta.upstream = None;
    for fd in d.heads.iter_mut().flat_map(|h| h.features.iter_mut()) {
        fd.upstream = None;
    }
    let d = LoadedDashboard::new("old.safetensors".into(), d.to_bytes().unwrap()).unwrap();
    let mut h = harness_on(d, FeaturesState::default(), Vec::new());
    open_head_2(&mut h);
    h.state_mut().1.feature = Some(f);
    h.run_steps(2);
    h.get_by_label("What wrote what it reads");
    h.get_by_label_contains("not in this file: `attn-saes dashboard --upstream` adds it");
}
