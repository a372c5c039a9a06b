//! The "Your text" view: type a text, and see which features of each head fire on each
//! token and, for a chosen (token, feature), the DFA over source tokens, computed live with
//! a model and SAE (the open run's on the desktop, the page's inference bundle on the web).
//! The view sees an analysis only as [`Analysed`], so both draw the same.

use eframe::egui::{self, RichText, Ui};

use super::features::{
    answer_panel, dfa_by_head_line, dfa_row, drawable, error_label, max_abs, shown_token,
    signed_fill, writers_grid,
};
use crate::dashboard::labels::Labels;
use crate::live::{
    Analysed, Answer, AnswerAsk, AskedEffect, AskedPrompts, AskedRanking, AskedSpread, AskedSteer,
    AskedUpstream, AttributionState, EffectState, FeatureEffect, FeatureRanking, LiveTokens,
    PromptLine, PromptsRanking, PromptsSpread, RankedFeature, SourceRule, SpreadAsk, Steered,
    Steering, Through, Upstream, UpstreamAsk,
};

/// What the view remembers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TextState {
    pub prompt: String,
    /// The selected position.
    #[serde(skip)]
    pub token: Option<usize>,
    /// The selected `(head, feature)` at that position.
    #[serde(skip)]
    pub pick: Option<(usize, usize)>,
    /// Steering strength, in multiples of the feature's largest activation.
    pub steer_times: f32,
    /// New tokens a steered continuation runs to.
    pub steer_tokens: usize,
    /// 0: the likeliest token each time; above, sampled at that temperature.
    pub steer_temperature: f32,
    pub steer_seed: u64,
    /// Sampling from the nucleus of this much probability (1: every token).
    pub steer_top_p: f32,
    /// Sample from this many of the likeliest tokens only (0: all of them).
    pub steer_top_k: usize,
    /// Hold the feature at the strength instead of adding it ([`Steering::clamp`]).
    pub steer_clamp: bool,
    /// Added or held only where the feature fires ([`Steering::where_fires`]).
    pub steer_where_fires: bool,
    /// Steer the new tokens only ([`Steering::new_only`]).
    pub steer_new_only: bool,
    /// Steer from the selected token on ([`Steering::from_position`]).
    pub steer_from_token: bool,
    /// Features kept in the steering besides the picked one ([`Steering::also`]):
    /// `(head, feature, strength)`.
    #[serde(skip)]
    pub steer_also: Vec<(usize, usize, f32)>,
    /// A feature to pick once the next analysis arrives (the Features view's "Use it in
    /// Your text").
    #[serde(skip)]
    pub pending_pick: Option<(usize, usize)>,
    /// Rank the features by an answer (a next token) instead of the text's loss.
    pub rank_by_answer: bool,
    /// The answer's token, as typed (" Mary").
    pub answer: String,
    /// The token it is compared against (empty: the answer's log-probability).
    pub against: String,
    /// The position the answer is predicted after (`None`: the last).
    #[serde(skip)]
    pub answer_at: Option<usize>,
    /// What the ranking shown was asked by (a changed answer asks again).
    #[serde(skip)]
    pub ranked_by: Option<Option<AnswerAsk>>,
    /// The source chosen to take upstream, for the `(position, head, feature)` it was
    /// chosen at (another pick starts from the strongest source again).
    #[serde(skip)]
    pub upstream_source: Option<((usize, usize, usize), usize)>,
    /// A prompt set's lines, as typed or pasted (`rank --prompts`' lines).
    pub prompt_set: String,
    /// The prompt set's lines the ranking shown was asked for (edited lines ask again), or
    /// why they could not be read.
    #[serde(skip)]
    pub prompt_set_asked: Option<Result<String, String>>,
    /// The feature to take apart upstream over the prompt set (`None`: the picked one,
    /// else the ranking's strongest).
    #[serde(skip)]
    pub spread_feature: Option<(usize, usize)>,
    /// Which source of each prompt to take apart, and whether to follow the strongest heads
    /// up from it.
    pub spread_from: SourceRule,
    pub spread_follow: bool,
    /// Why the prompt set's lines could not be read for a spread, when they could not.
    #[serde(skip)]
    pub spread_error: Option<String>,
}

impl TextState {
    /// Takes a new analysis: the pick waiting for it, at the position where that feature is
    /// strongest (else the last); or the selection kept if it still fits, else the last
    /// token, nothing picked.
    pub fn arrived(&mut self, a: &LiveTokens) {
        // An answer's position past the new text: the last again.
        if self.answer_at.is_some_and(|p| p >= a.len()) {
            self.answer_at = None;
        }
        if let Some((head, feature)) = self.pending_pick.take() {
            self.use_feature(a, head, feature);
            // A source chosen for it at a position (a prompt of a spread): that position.
            if let Some(((p, h, f), _)) = self.upstream_source
                && (h, f) == (head, feature)
                && p < a.len()
            {
                self.token = Some(p);
            }
        } else if self.token.is_none_or(|p| p >= a.len()) {
            self.token = a.len().checked_sub(1);
            self.pick = None;
        }
    }

    /// Sets Steer with it's controls to what `steering` asks (the page's
    /// `attnSaes.live_steer`), but for the strength slider, which is in multiples of an
    /// activation the view finds: the result line says the strength.
    pub fn show_steering(&mut self, steering: &Steering) {
        self.steer_tokens = steering.tokens;
        self.steer_temperature = steering.temperature;
        self.steer_seed = steering.seed;
        self.steer_top_p = steering.top_p.unwrap_or(1.0);
        self.steer_top_k = steering.top_k.unwrap_or(0);
        self.steer_clamp = steering.clamp;
        self.steer_where_fires = steering.where_fires;
        self.steer_new_only = steering.new_only;
        self.steer_from_token = steering.from_position.is_some();
        if let Some(p) = steering.from_position {
            // From a position inside the text: that token, selected.
            self.token = Some(p);
        }
        self.steer_also = steering.also.clone();
    }

    /// Picks `feature` of `head` in `a`, where it is strongest (else at the last token).
    pub fn use_feature(&mut self, a: &LiveTokens, head: usize, feature: usize) {
        let strongest = (head < a.n_heads).then(|| strongest_position(a, head, feature));
        self.token = strongest.flatten().or(a.len().checked_sub(1));
        self.pick = Some((head, feature));
    }
}

impl Default for TextState {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            token: None,
            pick: None,
            // `attn-saes steer`'s default (measured in README.md's steering section).
            steer_times: 4.0,
            steer_tokens: 24,
            steer_temperature: 0.0,
            steer_seed: 0,
            steer_top_p: 1.0,
            steer_top_k: 0,
            steer_clamp: false,
            steer_where_fires: false,
            steer_new_only: false,
            steer_from_token: false,
            steer_also: Vec::new(),
            pending_pick: None,
            rank_by_answer: false,
            answer: String::new(),
            against: String::new(),
            answer_at: None,
            ranked_by: None,
            upstream_source: None,
            prompt_set: String::new(),
            prompt_set_asked: None,
            spread_feature: None,
            spread_from: SourceRule::Answer,
            spread_follow: false,
            spread_error: None,
        }
    }
}

impl TextState {
    /// Sets the ranking's controls to `answer` (the page's `attnSaes.live_rank`), as asked.
    pub fn show_ranked_by(&mut self, answer: Option<&AnswerAsk>) {
        self.rank_by_answer = answer.is_some();
        if let Some(a) = answer {
            self.answer = a.answer.clone();
            self.against = a.against.clone().unwrap_or_default();
            self.answer_at = a.at;
        }
        self.ranked_by = Some(self.answer_ask());
    }

    /// What the ranking's controls ask for: `None`, the loss; else the answer.
    pub fn answer_ask(&self) -> Option<AnswerAsk> {
        self.rank_by_answer.then(|| AnswerAsk {
            answer: self.answer.clone(),
            against: Some(self.against.clone()).filter(|a| !a.is_empty()),
            at: self.answer_at,
        })
    }
}

/// What the view asks the app to do.
pub enum TextAction {
    Run,
    OpenFeature {
        head: usize,
        feature: usize,
    },
    /// Run the model again without this feature (see [`FeatureEffect`]).
    Effect {
        head: usize,
        feature: usize,
    },
    /// Rank every feature firing in the text (see [`FeatureRanking`]), by the loss or an
    /// answer.
    Rank(Option<AnswerAsk>),
    /// Continue the text clean and steered by this feature (see [`Steered`]).
    Steer(Steering),
    /// Split a feature's DFA at a position from a source by what wrote the residual stream
    /// at the source, or further up through heads (see [`Upstream`]).
    Upstream(UpstreamAsk),
    /// Rank the features over a prompt set (see [`PromptsRanking`]).
    RankPrompts(Vec<PromptLine>),
    /// Remove each of these features (the ranking's listed ones) from every prompt of the
    /// set ranked that it fires in, for its exact change (see [`PromptsRanking::exact`]).
    ExactPrompts(Vec<(usize, usize)>),
    /// Take a feature's DFA apart upstream on each prompt of a set (see [`PromptsSpread`]).
    SpreadPrompts(Vec<PromptLine>, SpreadAsk),
    /// Ask for a prompt set's file to read into the box (the desktop's file dialog).
    OpenPromptFile,
}

/// What the view was given of what it asked for: the effect last asked for (shown when it
/// is the picked feature's), the ranking (shown when it is the text's), and so on.
#[derive(Default, Clone, Copy)]
pub struct Answers<'a> {
    pub effect: Option<&'a AskedEffect>,
    pub ranking: Option<&'a AskedRanking>,
    /// The steered continuation last asked for (shown when it is the picked feature's).
    pub steer: Option<&'a AskedSteer>,
    /// The upstream split last asked for (shown when it is the picked feature's at the
    /// selected token).
    pub upstream: Option<&'a AskedUpstream>,
    /// The picked feature's largest activation in the open dashboards, if any (steering
    /// strengths are multiples of it; else of its largest in the text).
    pub largest: Option<f32>,
    /// The open dashboard's feature labels, if a dashboard is open.
    pub labels: Option<&'a Labels>,
    /// The ranking over a prompt set last asked for.
    pub prompts: Option<&'a AskedPrompts>,
    /// The spread upstream over a prompt set last asked for.
    pub spread: Option<&'a AskedSpread>,
}

/// Features listed per head for the selected token.
const FEATURES_SHOWN: usize = 8;

/// The view. `status` says what the analyser is doing; `analysis` is the latest result.
pub fn text_ui(
    ui: &mut Ui,
    s: &mut TextState,
    analysis: Option<&dyn Analysed>,
    status: &str,
    answers: Answers,
) -> Option<TextAction> {
    let mut action = None;
    ui.heading("Your text");
    ui.label(
        "Runs the model to the hooked layer and the SAE on the text: the features each head \
         fires on each token, and where they read from (DFA).",
    );
    let label = ui.label("text").id;
    ui.add(
        egui::TextEdit::multiline(&mut s.prompt)
            .desired_rows(3)
            .desired_width(f32::INFINITY)
            .hint_text("type or paste a text"),
    )
    .labelled_by(label);
    ui.horizontal(|ui| {
        if ui.button("Run").clicked() {
            action = Some(TextAction::Run);
        }
        ui.label(RichText::new(status).weak());
    });
    let Some(analysis) = analysis else {
        return action;
    };
    let a = analysis.tokens();
    ui.separator();
    egui::ScrollArea::vertical().show(ui, |ui| {
        tokens_row(ui, s, a);
        ui.separator();
        let ranking = answers.ranking.filter(|r| r.ids == a.ids);
        if let Some(asked) = ranking_panel(ui, s, a, ranking, answers.labels) {
            action = Some(asked);
        }
        if let Some(p) = s.token.filter(|&p| p < a.len()) {
            ui.separator();
            token_features(ui, s, a, p, answers.labels);
            if let Some((head, feature)) = s.pick {
                ui.separator();
                let label = answers.labels.and_then(|l| l.get(head, feature));
                if let Some(open) = pick_panel(ui, analysis, p, (head, feature), label) {
                    action = Some(open);
                }
                let upstream = answers
                    .upstream
                    .filter(|u| u.is_for(&a.ids, (head, feature), p));
                if let Some(asked) = upstream_panel(ui, s, analysis, p, (head, feature), upstream) {
                    action = Some(asked);
                }
                ui.separator();
                let effect = answers.effect.filter(|e| e.is_for(&a.ids, head, feature));
                if effect_panel(ui, s, a, effect) {
                    action = Some(TextAction::Effect { head, feature });
                }
                ui.separator();
                let steer = answers.steer.filter(|x| x.is_for(&a.ids, head, feature));
                if let Some(asked) = steer_panel(ui, s, a, (head, feature), answers.largest, steer)
                {
                    action = Some(asked);
                }
            }
        }
        ui.separator();
        if let Some(act) = prompts_panel(ui, s, a, answers.prompts, answers.labels) {
            action = Some(act);
        }
        ui.add_space(6.0);
        if let Some(act) = spread_panel(ui, s, a, answers) {
            action = Some(act);
        }
    });
    action
}

/// Which features matter over a prompt set: its lines (`rank --prompts`' JSON lines), a
/// button that ranks every feature by its estimated effect on each prompt's answer,
/// averaged, then the strongest each way (a click opens the feature's dashboard), each
/// head's together, and the prompts with their answers' values (a click analyses one).
fn prompts_panel(
    ui: &mut Ui,
    s: &mut TextState,
    a: &LiveTokens,
    asked: Option<&AskedPrompts>,
    labels: Option<&Labels>,
) -> Option<TextAction> {
    ui.label(RichText::new("Which features matter over a prompt set").strong());
    ui.label(
        RichText::new(
            "One prompt a line, as attn-saes rank --prompts reads them: {\"text\": \"When Mary \
             and John went to the store, John gave a drink to\", \"answer\": \" Mary\", \
             \"against\": \" John\"} (\"against\" and \"at\", the position the answer is \
             predicted after, optional), or one JSON array of them.",
        )
        .weak(),
    );
    let label = ui
        .horizontal(|ui| {
            let label = ui.label("prompt set").id;
            if ui
                .button("Open a prompt file…")
                .on_hover_text("JSON lines, as rank --prompts reads them (or drop a .jsonl file)")
                .clicked()
            {
                return (label, true);
            }
            (label, false)
        })
        .inner;
    let (label, open) = label;
    if open {
        return Some(TextAction::OpenPromptFile);
    }
    egui::ScrollArea::vertical()
        .id_salt("prompt set")
        .max_height(140.0)
        .show(ui, |ui| {
            ui.add(
                egui::TextEdit::multiline(&mut s.prompt_set)
                    .code_editor()
                    .desired_rows(4)
                    .desired_width(f32::INFINITY)
                    .hint_text("{\"text\": ..., \"answer\": ..., \"against\": ...}"),
            )
            .labelled_by(label);
        });
    let texts = (
        "Rank over the set",
        "estimates, for every feature that fires in a prompt, how much that prompt's answer \
         would fall without it (to first order: one backward pass a prompt), averaged over the \
         prompts",
        "ranking on each prompt…",
    );
    let asked_now = s.prompt_set_asked.clone();
    if let Some(Err(why)) = &asked_now {
        error_label(ui, why);
    }
    // A ranking of other lines than these is not shown: the button asks again.
    let state = asked
        .filter(|_| {
            asked_now
                .as_ref()
                .is_some_and(|t| t.as_ref() == Ok(&s.prompt_set))
        })
        .map(|p| &p.state);
    if let (Some(Answer::Computing), Some(p)) = (state, asked) {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(match p.progress {
                (0, n) => format!("ranking on each of the {n} prompts…"),
                (done, n) => format!("ranking on each prompt… {done} of {n}"),
            });
        });
        return None;
    }
    let (clicked, picked) = answer_panel(ui, state, texts, |ui, r| {
        prompts_ready(ui, s, a, (asked?, r), labels)
    });
    if !clicked {
        return picked;
    }
    let read = PromptLine::parse_set(&s.prompt_set, "the prompt set");
    match read {
        Ok(read) => {
            s.prompt_set_asked = Some(Ok(s.prompt_set.clone()));
            Some(TextAction::RankPrompts(
                read.into_iter().map(|x| x.1).collect(),
            ))
        }
        Err(why) => {
            s.prompt_set_asked = Some(Err(why));
            None
        }
    }
}

/// Prompts listed under a prompt set's ranking.
const PROMPTS_SHOWN: usize = 12;

fn prompts_ready(
    ui: &mut Ui,
    s: &mut TextState,
    a: &LiveTokens,
    (asked, r): (&AskedPrompts, &PromptsRanking),
    labels: Option<&Labels>,
) -> Option<TextAction> {
    let lines = &asked.lines;
    let n = r.objectives.len();
    let (mean, sd) = r.value_spread();
    ui.label(format!(
        "{n} prompts; {}: mean {mean:.4}, sd {sd:.4}. {} features fire in them; the estimated \
         fall in it without each, averaged over the prompts (a click opens its dashboard):",
        r.objective_said(),
        r.features.len()
    ));
    let fires = |f: &RankedFeature| format!("fires in {} of {n} prompts", f.fires);
    let ranked = (&r.features[..], r.by_head(a.n_heads));
    let mut action =
        (ranked_rows(ui, a, ranked, (labels, None), &fires)).map(|f| TextAction::OpenFeature {
            head: f.head,
            feature: f.feature,
        });
    if let Some(exact) = exact_panel(ui, a, asked, r) {
        action = Some(exact);
    }
    ui.label(
        RichText::new("The prompts, each with its answer's value (a click analyses it):").weak(),
    );
    for (line, (_, value)) in lines.iter().zip(&r.objectives).take(PROMPTS_SHOWN) {
        let text = format!("{value:+.3}  {}  → {:?}", line.text, line.ask.answer);
        if ui.button(RichText::new(text).monospace()).clicked() {
            s.prompt = line.text.clone();
            s.show_ranked_by(Some(&line.ask));
            action = Some(TextAction::Run);
        }
    }
    if lines.len() > PROMPTS_SHOWN {
        ui.label(RichText::new(format!("and {} more", lines.len() - PROMPTS_SHOWN)).weak());
    }
    action
}

/// The listed features' exact changes over a prompt set: a button that removes each from
/// every prompt it fires in (the model run twice a prompt), progress a feature at a time,
/// then each one's mean exact change beside its estimate.
fn exact_panel(
    ui: &mut Ui,
    a: &LiveTokens,
    asked: &AskedPrompts,
    r: &PromptsRanking,
) -> Option<TextAction> {
    let name = |h: usize, f: usize| match a.dense_heads {
        Some(_) => format!("#{f}"),
        None => format!("h{h} #{f}"),
    };
    match &asked.exact {
        Some((Answer::Computing, (done, of))) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!(
                    "removing each listed feature from every prompt it fires in… {done} of {of}"
                ));
            });
            None
        }
        Some((Answer::Ready(exact), _)) => {
            ui.label(
                "Exact: each removed from every prompt it fires in, what the answer loses, \
                 averaged over the prompts (the estimate in brackets):",
            );
            let estimate = |h: usize, f: usize| {
                (r.features.iter())
                    .find(|x| (x.head, x.feature) == (h, f))
                    .map_or(0.0, |x| x.estimate)
            };
            // In the rows above: the ones that help, then the ones that hurt.
            let rows = [("helps most", true), ("hurts most", false)];
            for (title, helps) in rows {
                ui.horizontal_wrapped(|ui| {
                    ui.spacing_mut().item_spacing.x = 14.0;
                    ui.label(RichText::new(title).strong());
                    for &(h, f, change) in exact.iter() {
                        if (estimate(h, f) > 0.0) == helps {
                            let said =
                                format!("{} {change:+.4} ({:+.4})", name(h, f), estimate(h, f));
                            ui.label(said);
                        }
                    }
                });
            }
            None
        }
        failed => {
            if let Some((Answer::Failed(why), _)) = failed {
                error_label(ui, &format!("failed: {why}"));
            }
            let listed = asked.listed(RANKED_SHOWN);
            ui.horizontal_wrapped(|ui| {
                let clicked = ui.button("Remove each for the exact change").clicked();
                ui.label(
                    RichText::new(format!(
                        "removes each of the {} features listed from every prompt it fires in \
                         (the model run twice a prompt) and averages what its answer loses",
                        listed.len()
                    ))
                    .weak(),
                );
                clicked.then_some(TextAction::ExactPrompts(listed))
            })
            .inner
        }
    }
}

/// Where a feature reads from over a prompt set: the feature (the picked one, else the
/// ranking's strongest), which source of each prompt, whether to follow the strongest heads
/// up, a button that takes its DFA apart on each prompt, then the spread.
fn spread_panel(
    ui: &mut Ui,
    s: &mut TextState,
    a: &LiveTokens,
    answers: Answers,
) -> Option<TextAction> {
    ui.label(RichText::new("Where a feature reads from, over the set").strong());
    ui.label(
        RichText::new(
            "On each prompt, the feature's DFA from one source (read where the answer is \
             predicted) split by what wrote the residual stream there, as What wrote what it \
             reads does; then each writer's part over the prompts, or the paths the strongest \
             heads took.",
        )
        .weak(),
    );
    let ranked = answers.prompts.and_then(|p| match &p.state {
        Answer::Ready(r) => r.features.first().map(|f| (f.head, f.feature)),
        _ => None,
    });
    let (mut head, mut feature) = (s.spread_feature.or(s.pick).or(ranked)).unwrap_or((0, 0));
    let computing = matches!(answers.spread.map(|x| &x.state), Some(Answer::Computing));
    let clicked = ui
        .horizontal_wrapped(|ui| {
            ui.label("feature");
            let last_head = a.n_heads.saturating_sub(1);
            let last_feature = a.features_per_head.saturating_sub(1);
            let h = ui
                .add(
                    egui::DragValue::new(&mut head)
                        .range(0..=last_head)
                        .prefix("h"),
                )
                .accessible_name("spread head");
            let f = ui
                .add(
                    egui::DragValue::new(&mut feature)
                        .range(0..=last_feature)
                        .prefix("#"),
                )
                .accessible_name("spread feature");
            if h.changed() || f.changed() {
                s.spread_feature = Some((head, feature));
            }
            let label = ui.label("from").id;
            egui::ComboBox::from_id_salt("spread source")
                .selected_text(source_rule_said(s.spread_from))
                .show_ui(ui, |ui| {
                    for rule in SourceRule::ALL {
                        ui.selectable_value(&mut s.spread_from, rule, source_rule_said(rule));
                    }
                })
                .response
                .labelled_by(label);
            ui.checkbox(&mut s.spread_follow, "follow the strongest head")
                .on_hover_text(FOLLOW_HOVER);
            ui.add_enabled(!computing, egui::Button::new("Take it apart over the set"))
                .on_hover_text(
                    "runs the model to the hooked layer once a prompt, keeping what each \
                     writer put in the residual stream (the DFA that chooses the source is \
                     read from the same pass)",
                )
                .clicked()
        })
        .inner;
    if let Some(why) = &s.spread_error {
        error_label(ui, why);
    }
    let read = |s: &TextState| PromptLine::parse_set(&s.prompt_set, "the prompt set");
    if clicked {
        let ask = SpreadAsk {
            feature: (head, feature),
            from: s.spread_from,
            follow: s.spread_follow,
        };
        let read = read(s);
        s.spread_error = read.as_ref().err().cloned();
        let lines = read.ok()?;
        return Some(TextAction::SpreadPrompts(
            lines.into_iter().map(|x| x.1).collect(),
            ask,
        ));
    }
    // A spread of other lines than the box's is not shown: the button asks again. (The box
    // is read only when there is a spread to show, not every frame.)
    let asked = answers.spread.filter(|x| {
        read(s).is_ok_and(|r| {
            r.len() == x.lines.len() && r.iter().zip(&x.lines).all(|(a, b)| a.1 == *b)
        })
    })?;
    match &asked.state {
        Answer::Computing => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(match asked.progress {
                    (0, n) => format!("taking it apart on each of the {n} prompts…"),
                    (done, n) => format!("taking it apart on each prompt… {done} of {n}"),
                });
            });
            None
        }
        Answer::Failed(why) => {
            error_label(ui, &format!("failed: {why}"));
            None
        }
        Answer::Ready(x) => spread_ready(ui, s, a, (&asked.ask, x)),
    }
}

/// [`SourceRule`] in the spread's menu.
fn source_rule_said(rule: SourceRule) -> &'static str {
    match rule {
        SourceRule::Strongest => "the strongest source",
        SourceRule::Largest => "the largest positive source",
        SourceRule::Answer => "the answer's token",
    }
}

/// A spread over a prompt set: the feature's activation and the sources taken apart, then
/// each writer's part over the prompts (or the paths followed), then the prompts, each a
/// button that analyses it with the feature picked at its position and its source chosen.
fn spread_ready(
    ui: &mut Ui,
    s: &mut TextState,
    a: &LiveTokens,
    (ask, x): (&SpreadAsk, &PromptsSpread),
) -> Option<TextAction> {
    let (head, feature) = ask.feature;
    let name = match a.dense_heads {
        Some(_) => format!("#{feature}"),
        None => format!("h{head} #{feature}"),
    };
    let tokens: Vec<String> = (x.source_tokens().iter())
        .map(|(t, k)| format!("{t:?} {k}"))
        .collect();
    ui.label(format!(
        "{name} on {} prompts, each where its answer is predicted: activation mean {:.4} (fires \
         on {}). The source {}: {}; its DFA mean {:+.4}.",
        x.prompts.len(),
        x.mean(|p| p.activation),
        x.fires(),
        ask.from.said(),
        tokens.join(", "),
        x.mean(|p| p.upstream.terms[0])
    ));
    if ask.follow {
        ui.label(
            "Followed up through the strongest head of each split while its term is at least \
             1% of the DFA from the source: each path (where each head read from: the position \
             before, BOS or elsewhere), its prompts, and the mean DFA from the source then each \
             step's mean term:",
        );
        for path in &x.paths {
            let steps: Vec<String> = path.steps.iter().map(|s| s.name()).collect();
            let steps = match steps.is_empty() {
                true => "no step (no head's term reaches 1% of the DFA)".to_string(),
                false => steps.join(" → "),
            };
            let terms: Vec<String> = path.terms.iter().map(|t| format!("{t:+.4}")).collect();
            ui.label(
                RichText::new(format!(
                    "{:>3}  {steps}  [{}]",
                    path.prompts,
                    terms.join(", ")
                ))
                .monospace(),
            );
        }
    } else {
        ui.label(
            "By what wrote the residual stream there, the mean over the prompts (sd) [least, \
             most]; an earlier head's, by where it read from:",
        );
        let (listed, rest) = x.strongest_writers(crate::live::UPSTREAM_LISTED);
        writers_grid(ui, ("spread", head, feature), &listed, rest);
    }
    ui.label(
        RichText::new(
            "The prompts, each with the feature's activation and the DFA from its source (a \
             click analyses it, the feature picked there and that source chosen):",
        )
        .weak(),
    );
    let mut action = None;
    for p in x.prompts.iter().take(PROMPTS_SHOWN) {
        let u = &p.upstream;
        let text = format!(
            "{:.3}  DFA {:+.3} from {:?}  {}",
            p.activation, u.terms[0], p.source_token, p.text
        );
        if ui.button(RichText::new(text).monospace()).clicked() {
            s.prompt = p.text.clone();
            s.pending_pick = Some((head, feature));
            s.upstream_source = Some(((u.target, head, feature), u.source));
            action = Some(TextAction::Run);
        }
    }
    if x.prompts.len() > PROMPTS_SHOWN {
        let more = x.prompts.len() - PROMPTS_SHOWN;
        ui.label(RichText::new(format!("and {more} more")).weak());
    }
    action
}

/// The tokens, shaded by how many features fire on them over all heads; a click selects.
fn tokens_row(ui: &mut Ui, s: &mut TextState, a: &LiveTokens) {
    ui.label(RichText::new("Tokens (click one)").strong());
    let counts: Vec<usize> = (0..a.len())
        .map(|p| a.active.iter().map(|head| head[p].len()).sum())
        .collect();
    let most = counts.iter().copied().max().unwrap_or(0).max(1);
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = egui::vec2(2.0, 6.0);
        for (p, text) in a.strings.iter().enumerate() {
            let fill = egui::Color32::from_rgb(230, 145, 56)
                .gamma_multiply(0.85 * counts[p] as f32 / most as f32);
            let shown = shown_token(ui, text, false);
            let button = egui::Button::new(RichText::new(&shown).monospace())
                .fill(fill)
                .selected(s.token == Some(p));
            let hover = match a.skipped(p) {
                true => format!("position {p}: {}", crate::live::BOS_SKIPPED),
                false => format!("position {p}: {} active features", counts[p]),
            };
            let mut response = ui.add(button).on_hover_text(hover);
            if shown.trim().is_empty() {
                response = response.accessible_name(format!("whitespace token at {p}"));
            }
            if response.clicked() {
                s.token = Some(p);
                s.pick = None;
            }
        }
    });
}

/// The selected token's strongest features per head; a click picks one.
fn token_features(
    ui: &mut Ui,
    s: &mut TextState,
    a: &LiveTokens,
    p: usize,
    labels: Option<&Labels>,
) {
    ui.label(
        RichText::new(format!(
            "Position {p} ({:?}): active features per head",
            a.strings[p]
        ))
        .strong(),
    );
    if a.skipped(p) {
        ui.label(crate::live::BOS_SKIPPED);
        return;
    }
    for (head, per_position) in a.active.iter().enumerate() {
        let on = &per_position[p];
        ui.horizontal_wrapped(|ui| {
            let (title, chip_head) = match a.dense_heads {
                Some(_) => ("All heads (dense)".to_string(), String::new()),
                None => (format!("Head {head}"), format!("h{head} ")),
            };
            ui.label(RichText::new(format!("{title} · {} active", on.len())).strong());
            for &(f, act) in on.iter().take(FEATURES_SHOWN) {
                let picked = s.pick == Some((head, f as usize));
                let mut chip = ui.selectable_label(picked, format!("{chip_head}#{f} {act:.2}"));
                if let Some(label) = labels.and_then(|l| l.get(head, f as usize)) {
                    chip = chip.on_hover_text(label);
                }
                if chip.clicked() {
                    s.pick = Some((head, f as usize));
                }
            }
            if on.len() > FEATURES_SHOWN {
                ui.label(RichText::new(format!("+{} more", on.len() - FEATURES_SHOWN)).weak());
            }
        });
    }
}

/// The picked feature at the selected token: activation, DFA by source, and a way to its
/// dashboard.
fn pick_panel(
    ui: &mut Ui,
    analysis: &dyn Analysed,
    p: usize,
    (head, feature): (usize, usize),
    label: Option<&str>,
) -> Option<TextAction> {
    let a = analysis.tokens();
    let act = a.activation(head, feature, p);
    ui.horizontal(|ui| {
        ui.heading(super::features::feature_title(
            a.dense_heads.is_some(),
            head,
            feature,
        ));
        ui.label(format!("activation {act:.3} at position {p}"));
    });
    if let Some(label) = label {
        ui.label(RichText::new(label).italics())
            .on_hover_text("its label in the open dashboard's labels");
    }
    let open = ui.button("Open its dashboard").clicked();
    ui.label(RichText::new("Direct feature attribution by source position").strong());
    match analysis.attribution_state(head, feature, p) {
        AttributionState::Ready(attribution) => {
            dfa_row(ui, &attribution.dfa, p, &a.ids, |q| {
                a.strings.get(q).cloned().unwrap_or_default()
            });
            ui.label(format!("pre-activation {:.3}", attribution.pre));
            dfa_by_head_line(ui, &attribution.by_head);
        }
        AttributionState::Computing => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("computing…");
            });
        }
        AttributionState::Failed(why) => {
            ui.colored_label(ui.visuals().error_fg_color, format!("failed: {why}"));
        }
    }
    open.then_some(TextAction::OpenFeature { head, feature })
}

/// The picked feature's DFA from one source taken a step upstream: a source to choose (the
/// strongest by default), a button that asks, then the split by what wrote the residual
/// stream there.
fn upstream_panel(
    ui: &mut Ui,
    s: &mut TextState,
    analysis: &dyn Analysed,
    p: usize,
    (head, feature): (usize, usize),
    asked: Option<&AskedUpstream>,
) -> Option<TextAction> {
    let AttributionState::Ready(attribution) = analysis.attribution_state(head, feature, p) else {
        return None;
    };
    let a = analysis.tokens();
    let dfa = &attribution.dfa;
    let key = (p, head, feature);
    let chosen = (s.upstream_source.filter(|u| u.0 == key)).map(|u| u.1);
    let mut source = chosen
        .unwrap_or_else(|| crate::live::strongest_source(dfa))
        .min(p);
    ui.label(RichText::new("What wrote what it reads").strong());
    ui.label(
        RichText::new(
            "The DFA from one source split by what wrote the residual stream there: the \
             token's embedding, each earlier head (with the positions it read from), each \
             earlier MLP, the biases (the norm's scale there held at its value).",
        )
        .weak(),
    );
    let computing = matches!(asked.map(|u| &u.state), Some(Answer::Computing));
    let ask = |source| UpstreamAsk::new((head, feature), (p, source));
    let mut action = ui
        .horizontal(|ui| {
            let label = ui.label("source").id;
            let drag = ui
                .add(egui::DragValue::new(&mut source).range(0..=p))
                .labelled_by(label)
                .on_hover_text("the source position whose DFA to take apart");
            if drag.changed() {
                s.upstream_source = Some((key, source));
            }
            let token = a.strings.get(source).map(String::as_str).unwrap_or("");
            let value = dfa.get(source).copied().unwrap_or(0.0);
            ui.label(RichText::new(format!("{token:?} (DFA {value:+.3})")).monospace());
            let take = ui
                .add_enabled(!computing, egui::Button::new("Take it apart"))
                .on_hover_text(
                    "runs the model to the hooked layer again, keeping what each writer put \
                     in the residual stream at the source",
                );
            let follow = ui
                .add_enabled(!computing, egui::Button::new("Follow the strongest head"))
                .on_hover_text(FOLLOW_HOVER);
            match (take.clicked(), follow.clicked()) {
                (true, _) => Some(TextAction::Upstream(ask(source))),
                (_, true) => Some(TextAction::Upstream(ask(source).following())),
                _ => None,
            }
        })
        .inner;
    match asked.map(|u| (&u.state, &u.ask)) {
        Some((Answer::Computing, _)) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("running the model to the layer…");
            });
        }
        Some((Answer::Failed(why), _)) => error_label(ui, &format!("failed: {why}")),
        Some((Answer::Ready(u), asked)) => {
            if let Some(next) = upstream_ready(ui, a, u, asked, computing) {
                action = Some(TextAction::Upstream(next));
            }
        }
        None => {}
    }
    action
}

const FOLLOW_HOVER: &str = "takes it apart, then a step further up through the earlier head \
     with the largest part, reading from the position giving most of its term, and so on while \
     that term is at least 1% of the DFA from the source (MLPs are not split further)";

/// The strongest writers of a source's DFA (or of a head's term further up), each with its
/// part (shaded by size), an earlier head with the positions it read from, each a button
/// that takes that term a step further up; then the rest together. Returns the next split
/// asked for (a step up, or back).
fn upstream_ready(
    ui: &mut Ui,
    a: &LiveTokens,
    u: &Upstream,
    asked: &UpstreamAsk,
    computing: bool,
) -> Option<UpstreamAsk> {
    let token = |q: usize| {
        format!(
            "{q} {:?}",
            a.strings.get(q).map(String::as_str).unwrap_or("")
        )
    };
    let mut next = None;
    // What this split is, without following: the steps from here on go from it.
    let here = u.asked();
    if asked.follow {
        followed_path(ui, u, &token);
    }
    ui.horizontal_wrapped(|ui| {
        if !u.through.is_empty()
            && ui
                .add_enabled(!computing, egui::Button::new("back a step"))
                .on_hover_text("the split one step further down, where this head's term came from")
                .clicked()
        {
            next = Some(here.back());
        }
        if !asked.follow
            && ui
                .add_enabled(!computing, egui::Button::new("follow from here"))
                .on_hover_text(FOLLOW_HOVER)
                .clicked()
        {
            next = Some(here.following());
        }
        let layer = match u.through.last() {
            Some(s) => format!("entering layer {}", s.layer),
            None => "entering the hooked layer".to_string(),
        };
        ui.label(format!(
            "The {} ({:+.4}) by what wrote the residual stream {layer} at {}:",
            u.described(token),
            u.dfa,
            token(u.split_position())
        ));
    });
    let listed = u.strongest(crate::live::UPSTREAM_LISTED);
    let scale = max_abs(listed.iter().map(|w| w.value));
    egui::Grid::new(("upstream", u.head, u.feature, u.target, u.source))
        .num_columns(3)
        .spacing(egui::vec2(10.0, 2.0))
        .show(ui, |ui| {
            for part in listed {
                let value = RichText::new(format!("{:+.4}", part.value))
                    .monospace()
                    .background_color(signed_fill(part.value, scale));
                ui.label(value);
                ui.label(part.writer.name());
                ui.horizontal(|ui| {
                    let crate::live::Writer::Head { layer, head } = part.writer else {
                        return;
                    };
                    let from = part.reading_from(crate::live::UPSTREAM_SOURCES);
                    if !from.is_empty() {
                        ui.label(RichText::new("reading from").weak());
                    }
                    for (q, v) in from {
                        let text =
                            drawable(ui, &egui::TextStyle::Body, &format!("{} {v:+.4}", token(q)));
                        let hover = format!(
                            "take L{layer} h{head}'s term read from {} a step further up: what \
                             wrote the stream it read there",
                            token(q)
                        );
                        let button = egui::Button::new(text);
                        if ui
                            .add_enabled(!computing, button)
                            .on_hover_text(hover)
                            .clicked()
                        {
                            next = Some(here.then(Through {
                                layer,
                                head,
                                from: q,
                            }));
                        }
                    }
                });
                ui.end_row();
            }
            let (rest, sum) = u.rest(crate::live::UPSTREAM_LISTED);
            if rest > 0 {
                ui.label(RichText::new(format!("{sum:+.4}")).monospace());
                ui.label(format!("the other {rest} together"));
                ui.end_row();
            }
        });
    next
}

/// The path "Follow the strongest head" took: each step's head, the position it read from
/// and its term (with its share of the one before), then why it stopped.
fn followed_path(ui: &mut Ui, u: &Upstream, token: &dyn Fn(usize) -> String) {
    let (header, steps) = u.followed_said(token);
    ui.label(header);
    for step in steps {
        ui.label(RichText::new(step).monospace());
    }
    ui.label(RichText::new(format!("stops: {}", u.why_stopped(token))).weak());
}

/// What removing the picked feature changes in the model's predictions: a button that asks
/// for it (true when clicked), then the answer.
fn effect_panel(
    ui: &mut Ui,
    s: &mut TextState,
    a: &LiveTokens,
    effect: Option<&AskedEffect>,
) -> bool {
    ui.label(RichText::new("Effect on the predictions").strong());
    // A dense SAE's feature writes every head's part of hook_z.
    let out_of = match a.dense_heads {
        Some(_) => "hook_z",
        None => "its head's hook_z",
    };
    let hint = format!(
        "runs the model again with this feature taken out of {out_of} wherever it fires in \
         the text"
    );
    let labels = (
        "Remove it and run again",
        hint.as_str(),
        "running the model without it…",
    );
    let state: Option<&EffectState> = effect.map(|e| &e.state);
    answer_panel(ui, state, labels, |ui, e| {
        effect_ready(ui, s, a, e);
        None::<()>
    })
    .0
}

/// Steering with the picked feature: its strength and length, a button that asks for the
/// continuations, then both, the steered one coloured from where they part.
fn steer_panel(
    ui: &mut Ui,
    s: &mut TextState,
    a: &LiveTokens,
    (head, feature): (usize, usize),
    largest: Option<f32>,
    asked: Option<&AskedSteer>,
) -> Option<TextAction> {
    ui.label(RichText::new("Steer with it").strong());
    let in_text = (0..a.len())
        .map(|p| a.activation(head, feature, p))
        .fold(0.0f32, f32::max);
    let (basis, of) = match largest {
        Some(x) => (x, "its largest activation in the dashboards"),
        None => (in_text, "its largest activation in this text"),
    };
    let strength = s.steer_times * basis;
    ui.horizontal_wrapped(|ui| {
        ui.add(
            egui::Slider::new(&mut s.steer_times, -16.0..=16.0)
                .step_by(0.5)
                .suffix("x"),
        )
        .on_hover_text("negative pushes the other way");
        ui.label(format!("{of} ({basis:.3}): strength {strength:.3}"));
    });
    ui.horizontal_wrapped(|ui| {
        ui.radio_value(&mut s.steer_clamp, false, "add it")
            .on_hover_text("the feature's decoder row times the strength, added where it is");
        ui.radio_value(&mut s.steer_clamp, true, "hold it at the strength")
            .on_hover_text(
                "clamped: its activation is replaced by the strength at every position after \
                 BOS; at 0x the model runs without it",
            );
        ui.checkbox(&mut s.steer_where_fires, "only where it fires")
            .on_hover_text(
                "added (or held at the strength) only at the positions where the feature's \
                 activation is above 0; nothing added where it does not fire",
            );
    });
    // Where: every position after BOS, the selected token on, or the new tokens only.
    let from_token = s.token.unwrap_or(0);
    ui.horizontal_wrapped(|ui| {
        let mut at = (s.steer_new_only, s.steer_from_token && !s.steer_new_only);
        ui.radio_value(&mut at, (false, false), "after BOS")
            .on_hover_text("steer every position of the text and the continuation after BOS");
        let token = a.strings.get(from_token).map(String::as_str).unwrap_or("");
        ui.radio_value(
            &mut at,
            (false, true),
            format!("from token {from_token} ({token:?}) on"),
        )
        .on_hover_text(
            "steer from the selected token (click another in Tokens to move it) to the end of \
             the continuation, not before it",
        );
        ui.radio_value(&mut at, (true, false), "the new tokens only")
            .on_hover_text(
                "steer the continuation's positions, not the text's: the first new token is \
                 then the clean one's",
            );
        (s.steer_new_only, s.steer_from_token) = at;
    });
    ui.horizontal_wrapped(|ui| {
        let kept = (s.steer_also.iter()).any(|&(h, f, _)| (h, f) == (head, feature));
        if !kept
            && ui
                .add_enabled(basis > 0.0, egui::Button::new("Keep it in the steering"))
                .on_hover_text(
                    "steer with it at this strength as well when you pick another feature \
                     (a concept spread over heads)",
                )
                .clicked()
        {
            s.steer_also.push((head, feature, strength));
        }
        let mut dropped = None;
        for (i, &(h, f, x)) in s.steer_also.iter().enumerate() {
            if (h, f) == (head, feature) {
                continue;
            }
            if ui
                .button(format!("also h{h} #{f} at {x:.3} ×"))
                .on_hover_text("steered with the picked feature; click to leave it out")
                .clicked()
            {
                dropped = Some(i);
            }
        }
        if let Some(i) = dropped {
            s.steer_also.remove(i);
        }
    });
    ui.horizontal(|ui| {
        let tokens =
            egui::DragValue::new(&mut s.steer_tokens).range(1..=crate::live::MAX_NEW_TOKENS);
        labelled_drag(ui, "new tokens", tokens, None);
        labelled_drag(
            ui,
            "temperature",
            egui::DragValue::new(&mut s.steer_temperature)
                .range(0.0..=2.0)
                .speed(0.05),
            Some("0: the likeliest token each time; above, sampled at that temperature"),
        );
        if s.steer_temperature > 0.0 {
            labelled_drag(
                ui,
                "seed",
                egui::DragValue::new(&mut s.steer_seed),
                Some("both continuations draw the same random numbers"),
            );
            labelled_drag(
                ui,
                "top-p",
                egui::DragValue::new(&mut s.steer_top_p)
                    .range(0.01..=1.0)
                    .speed(0.01),
                Some("draw from the likeliest tokens up to this much probability (1: all of them)"),
            );
            labelled_drag(
                ui,
                "top-k",
                egui::DragValue::new(&mut s.steer_top_k).range(0..=1000),
                Some("draw from this many of the likeliest tokens only (0: all of them)"),
            );
        }
    });
    let computing = matches!(asked.map(|x| &x.state), Some(Answer::Computing));
    let clicked = ui
        .horizontal_wrapped(|ui| {
            let clicked = ui
                .add_enabled(
                    !computing && basis > 0.0,
                    egui::Button::new("Continue the text"),
                )
                .clicked();
            let from = format!("from position {from_token} on");
            let at = match (s.steer_new_only, s.steer_from_token) {
                (true, _) => "at each new token's position",
                (false, true) => from.as_str(),
                (false, false) => "at every position after BOS",
            };
            let only = crate::live::where_fires_said(s.steer_where_fires);
            // A dense SAE's feature writes every head's part of hook_z.
            let hook_z = match a.dense_heads {
                Some(_) => "hook_z".to_string(),
                None => format!("head {head}'s hook_z"),
            };
            let why = if basis > 0.0 && s.steer_clamp {
                format!(
                    "the model continues the text twice: as it is, and with this feature's \
                     activation held at that strength in {hook_z} {at}{only}"
                )
            } else if basis > 0.0 {
                format!(
                    "the model continues the text twice: as it is, and with this feature \
                     added to {hook_z} {at}{only}, as if it fired there at that \
                     strength"
                )
            } else {
                "it does not fire in this text and no dashboard is open: there is no \
                 activation to scale the strength by"
                    .to_string()
            };
            ui.label(RichText::new(why).weak());
            clicked
        })
        .inner;
    match asked.map(|x| &x.state) {
        Some(Answer::Computing) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("continuing the text…");
            });
        }
        Some(Answer::Failed(why)) => error_label(ui, &format!("failed: {why}")),
        Some(Answer::Ready(steered)) => steered_ready(ui, steered),
        None => {}
    }
    clicked.then_some(TextAction::Steer(Steering {
        head,
        feature,
        strength,
        tokens: s.steer_tokens,
        temperature: s.steer_temperature,
        seed: s.steer_seed,
        top_p: (s.steer_temperature > 0.0 && s.steer_top_p < 1.0).then_some(s.steer_top_p),
        top_k: (s.steer_temperature > 0.0 && s.steer_top_k > 0).then_some(s.steer_top_k),
        clamp: s.steer_clamp,
        where_fires: s.steer_where_fires,
        new_only: s.steer_new_only,
        from_position: (s.steer_from_token && !s.steer_new_only).then_some(from_token),
        also: (s.steer_also.iter().copied())
            .filter(|&(h, f, _)| (h, f) != (head, feature))
            .collect(),
    }))
}

/// A number to drag, named by the label before it (for screen readers and tests), with a
/// hover text if any.
fn labelled_drag(ui: &mut Ui, label: &str, drag: egui::DragValue, hover: Option<&str>) {
    let label = ui.label(label).id;
    let response = ui.add(drag).labelled_by(label);
    if let Some(hover) = hover {
        response.on_hover_text(hover);
    }
}

fn steered_ready(ui: &mut Ui, x: &Steered) {
    let s = &x.steering;
    let n = x.clean.ids.len();
    let parts = x.parts_at();
    let how = s.sampling();
    let also: String = (s.also.iter())
        .map(|(h, f, s)| format!(", with h{h} #{f} at {s:.3}"))
        .collect();
    let fires = crate::live::where_fires_said(s.where_fires);
    let at = match s.clamp {
        false => format!("Added at strength {:.3}{fires}{also}", s.strength),
        true => format!("Held at activation {:.3}{fires}{also}", s.strength),
    };
    ui.label(if parts == n {
        format!("{at} ({how}), the {n} new tokens are the same both ways.")
    } else {
        format!(
            "{at} ({how}), the continuations part at new token {parts} of {n} (coloured from \
             there)."
        )
    });
    let mean = |p: &[f32]| p.iter().sum::<f32>() / p.len().max(1) as f32;
    for (name, c, colour) in [
        ("clean", &x.clean, egui::Color32::from_gray(150)),
        ("steered", &x.steered, egui::Color32::from_rgb(70, 130, 220)),
    ] {
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing = egui::vec2(0.0, 4.0);
            ui.label(
                RichText::new(format!("{name} ({:.2}): ", mean(&c.prob)))
                    .strong()
                    .monospace(),
            )
            .on_hover_text("the mean probability the model gave its tokens");
            for (i, token) in c.tokens.iter().enumerate() {
                let mut rich = RichText::new(shown_token(ui, token, false)).monospace();
                if i >= parts {
                    rich = rich.background_color(colour.gamma_multiply(0.45));
                }
                ui.label(rich)
                    .on_hover_text(format!("new token {i}: probability {:.3}", c.prob[i]));
            }
        });
    }
}

/// Blue where the feature helps predict the next token (the loss rises without it), red
/// where it hurts.
fn helps_fill(helps: f32, most: f32) -> egui::Color32 {
    let colour = if helps > 0.0 {
        egui::Color32::from_rgb(70, 130, 220)
    } else {
        egui::Color32::from_rgb(220, 80, 60)
    };
    colour.gamma_multiply(0.9 * (helps.abs() / most).min(1.0))
}

fn effect_ready(ui: &mut Ui, s: &mut TextState, a: &LiveTokens, e: &FeatureEffect) {
    let t = a.len();
    let fires = e.activation.iter().filter(|&&x| x > 0.0).count();
    let most = (0..e.loss.len())
        .map(|p| e.helps(p).abs())
        .fold(0.0f32, f32::max);
    ui.label(format!(
        "Without it (at the {fires} of {t} positions where it fires) the loss on the next \
         tokens changes by {:+.4} in all; blue: it helps predict the next token, red: it hurts \
         (underlined: it fires there).",
        e.total()
    ));
    if let Some((objective, change)) = &e.objective {
        ui.label(format!(
            "Without it {} goes from {:.4} to {:.4}: the feature adds {:+.4} to it.",
            objective.describe(),
            change.clean,
            change.changed,
            change.helps()
        ));
    }
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = egui::vec2(2.0, 6.0);
        for (p, text) in a.strings.iter().enumerate() {
            let mut rich = RichText::new(shown_token(ui, text, false)).monospace();
            if e.activation[p] > 0.0 {
                rich = rich.underline();
            }
            let (fill, hover) = match e.loss.get(p) {
                Some(&clean) if most > 0.0 => (
                    helps_fill(e.helps(p), most),
                    format!(
                        "position {p}, activation {:.3}: the loss on {:?} is {clean:.4}, \
                         {:.4} without the feature ({:+.4})",
                        e.activation[p],
                        a.strings[p + 1],
                        e.ablated[p],
                        e.helps(p)
                    ),
                ),
                _ => (
                    egui::Color32::TRANSPARENT,
                    format!("position {p}, activation {:.3}", e.activation[p]),
                ),
            };
            let button = egui::Button::new(rich)
                .fill(fill)
                .selected(s.token == Some(p));
            let hover = drawable(ui, &egui::TextStyle::Body, &hover);
            let response = ui
                .add(button)
                .on_hover_text(hover)
                .accessible_name(format!("effect at position {p}"));
            if response.clicked() {
                s.token = Some(p);
            }
        }
    });
    if let Some(p) = s.token.filter(|&p| p < t) {
        let list = |changes: &[crate::live::TokenChange]| -> String {
            if changes.is_empty() {
                return "nothing".into();
            }
            changes
                .iter()
                .map(|c| format!("{:?} {:.3} ({})", c.token, c.clean, signed(c.change())))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let line = format!(
            "At position {p}, the feature raises the probability of the next token being {}; \
             lowers {} (with it, and what it adds).",
            list(&e.promotes[p]),
            list(&e.suppresses[p])
        );
        ui.label(drawable(ui, &egui::TextStyle::Body, &line));
    }
}

/// A small signed number with three significant places at least.
fn signed(x: f32) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:+.1e}")
    } else {
        format!("{x:+.3}")
    }
}

/// Features listed each way in the ranking.
pub const RANKED_SHOWN: usize = 8;

/// Which features matter for the text: a button that asks for the ranking, then the
/// features that help and hurt the predictions most; a click picks one (at the position it
/// fires most strongly) and asks for its exact effect.
fn ranking_panel(
    ui: &mut Ui,
    s: &mut TextState,
    a: &LiveTokens,
    ranking: Option<&AskedRanking>,
    labels: Option<&Labels>,
) -> Option<TextAction> {
    ui.label(RichText::new("Which features matter here").strong());
    answer_controls(ui, s, a);
    let texts = (
        "Rank the features",
        if s.rank_by_answer {
            "estimates, for every feature that fires, how much the answer's logit difference \
             (or log-probability, with no token against it) would fall without it (to first \
             order: one backward pass through the model)"
        } else {
            "estimates, for every feature that fires, how much the text's loss would rise \
             without it (to first order: one backward pass through the model)"
        },
        "running the model forward and back…",
    );
    // A ranking asked by other controls than these is not shown: the button asks again.
    let ask = s.answer_ask();
    let state = ranking
        .map(|r| &r.state)
        .filter(|_| s.ranked_by.as_ref().is_none_or(|by| *by == ask));
    match answer_panel(ui, state, texts, |ui, r| ranking_ready(ui, s, a, r, labels)) {
        (true, _) => {
            s.ranked_by = Some(ask.clone());
            Some(TextAction::Rank(ask))
        }
        (false, picked) => picked,
    }
}

/// What the ranking is by: the text's loss, or a next token (against another) after a
/// position.
fn answer_controls(ui: &mut Ui, s: &mut TextState, a: &LiveTokens) {
    ui.horizontal_wrapped(|ui| {
        ui.label("rank by");
        ui.radio_value(&mut s.rank_by_answer, false, "the text's loss");
        ui.radio_value(&mut s.rank_by_answer, true, "a next token:");
        if !s.rank_by_answer {
            return;
        }
        let edit = |ui: &mut Ui, text: &mut String, hint: &str, name: &str| {
            ui.add(
                egui::TextEdit::singleline(text)
                    .hint_text(hint)
                    .desired_width(90.0),
            )
            .on_hover_text(
                "one token of the model's vocabulary, its leading space included where it \
                 has one",
            )
            .accessible_name(name)
        };
        edit(ui, &mut s.answer, "\" Mary\"", "answer token");
        ui.label("against");
        edit(ui, &mut s.against, "(none: its log-prob)", "token against");
        ui.label("after position");
        let last = a.len().saturating_sub(1);
        let mut at = s.answer_at.unwrap_or(last).min(last);
        let drag = ui
            .add(egui::DragValue::new(&mut at).range(0..=last))
            .accessible_name("answer position");
        if drag.changed() {
            s.answer_at = Some(at);
        }
        if let Some(token) = a.strings.get(at) {
            ui.label(RichText::new(format!("{token:?}")).monospace());
        }
    });
}

fn ranking_ready(
    ui: &mut Ui,
    s: &mut TextState,
    a: &LiveTokens,
    r: &FeatureRanking,
    labels: Option<&Labels>,
) -> Option<TextAction> {
    let mut said = format!(
        "{} features fire. {} (first order); a click picks it where it fires most and \
         removes it for the exact change.",
        r.features.len(),
        capitalised(&r.objective.estimated())
    );
    if let Some(v) = r.value {
        said += &format!(" Here {} is {v:.4}.", r.objective.describe());
    }
    ui.label(said);
    let fires = |f: &RankedFeature| format!("fires at {}", crate::live::positions(f.fires));
    let ranked = (&r.features[..], r.by_head(a.n_heads));
    let f = ranked_rows(ui, a, ranked, (labels, s.pick), &fires)?;
    s.token = strongest_position(a, f.head, f.feature);
    s.pick = Some((f.head, f.feature));
    Some(TextAction::Effect {
        head: f.head,
        feature: f.feature,
    })
}

/// A ranking's strongest features each way, each a selectable label (the one `picked`
/// selected; hovering tells its label and `fires` of it), then each head's estimates
/// together (but for a dense SAE, whose one block is every head); returns the one clicked.
fn ranked_rows<'r>(
    ui: &mut Ui,
    a: &LiveTokens,
    (features, by_head): (&'r [RankedFeature], Vec<f32>),
    (labels, picked): (Option<&Labels>, Option<(usize, usize)>),
    fires: &dyn Fn(&RankedFeature) -> String,
) -> Option<&'r RankedFeature> {
    let mut clicked = None;
    let mut row = |ui: &mut Ui, title: &str, features: Vec<&'r RankedFeature>| {
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new(title).strong());
            if features.is_empty() {
                ui.label(RichText::new("none").weak());
            }
            for f in features {
                let label = match a.dense_heads {
                    Some(_) => format!("#{} {}", f.feature, signed(f.estimate)),
                    None => format!("h{} #{} {}", f.head, f.feature, signed(f.estimate)),
                };
                let hover = match labels.and_then(|l| l.get(f.head, f.feature)) {
                    Some(name) => format!("{name}; {}", fires(f)),
                    None => fires(f),
                };
                let selected = picked == Some((f.head, f.feature));
                if ui
                    .selectable_label(selected, label)
                    .on_hover_text(hover)
                    .clicked()
                {
                    clicked = Some(f);
                }
            }
        });
    };
    let [helps, hurts] = crate::live::strongest_each_way(features, RANKED_SHOWN);
    row(ui, "helps most", helps);
    row(ui, "hurts most", hurts);
    if a.dense_heads.is_none() {
        let heads: Vec<String> = (by_head.iter().enumerate())
            .map(|(h, x)| format!("h{h} {}", signed(*x)))
            .collect();
        ui.label(format!(
            "By head (its features together): {}",
            heads.join(", ")
        ));
    }
    clicked
}

/// `text` with its first letter in upper case.
fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The position where `feature` of `head` is most active.
fn strongest_position(a: &LiveTokens, head: usize, feature: usize) -> Option<usize> {
    (0..a.len())
        .map(|p| (p, a.activation(head, feature, p)))
        .filter(|x| x.1 > 0.0)
        .max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.cmp(&x.0)))
        .map(|x| x.0)
}
