//! The web viewer's entry (wasm32 only): the app's Curves and Features views on a canvas,
//! and the functions `web/index.html` calls to hand it dashboard files (file input, drag
//! and drop, `?url=`) and to read what is selected.

use std::cell::RefCell;
use std::rc::Rc;

use eframe::egui;
use wasm_bindgen::prelude::*;

use crate::app::features::LoadedDashboard;
use crate::app::{AttnSaesApp, View};

/// What the page and the app share: dashboards parsed by [`open_dashboard`] and waiting
/// for the next frame, the app's context (to wake it), and the selection in words.
#[derive(Default)]
struct Shared {
    inbox: Vec<LoadedDashboard>,
    ctx: Option<egui::Context>,
    selection: String,
}

thread_local! {
    static SHARED: Rc<RefCell<Shared>> = Rc::default();
}

fn shared() -> Rc<RefCell<Shared>> {
    SHARED.with(Rc::clone)
}

/// The app plus the page's inbox.
struct WebApp {
    app: AttnSaesApp,
    shared: Rc<RefCell<Shared>>,
}

impl eframe::App for WebApp {
    fn logic(&mut self, ctx: &egui::Context, frame: &mut eframe::Frame) {
        let arrived: Vec<LoadedDashboard> = self.shared.borrow_mut().inbox.drain(..).collect();
        for d in arrived {
            self.app.curves = Default::default();
            self.app.open_loaded(d);
        }
        self.app.logic(ctx, frame);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        if self.app.dashboard.is_none() && self.app.ui.view == View::Train {
            self.app.ui.view = View::Features;
        }
        self.app.ui(ui, frame);
        self.shared.borrow_mut().selection = self.app.selection();
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        self.app.save(storage);
    }
}

/// Starts the viewer on the canvas with id `canvas_id`.
#[wasm_bindgen]
pub async fn start(canvas_id: String) -> Result<(), JsValue> {
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or_else(|| JsValue::from_str("no document"))?;
    let canvas = document
        .get_element_by_id(&canvas_id)
        .ok_or_else(|| JsValue::from_str(&format!("no element #{canvas_id}")))?
        .dyn_into::<web_sys::HtmlCanvasElement>()?;
    let shared = shared();
    eframe::WebRunner::new()
        .start(
            canvas,
            eframe::WebOptions::default(),
            Box::new(move |cc| {
                shared.borrow_mut().ctx = Some(cc.egui_ctx.clone());
                let app = AttnSaesApp::new(cc);
                Ok(Box::new(WebApp { app, shared }))
            }),
        )
        .await
}

/// Parses a dashboard file and shows it on the next frame. Returns a one-line summary, or
/// the reason the file cannot be read (malformed, truncated, another format or version).
#[wasm_bindgen]
pub fn open_dashboard(name: String, bytes: Vec<u8>) -> Result<String, JsValue> {
    let d = LoadedDashboard::new(name.clone(), bytes)
        .map_err(|e| JsValue::from_str(&format!("{name}: {e}")))?;
    let meta = &d.file.meta;
    let summary = format!(
        "{name}: {} heads x {} features, {} (layer {}), {} tokens scanned",
        meta.sae.n_heads,
        meta.sae.features_per_head,
        meta.model.name,
        meta.hook_layer,
        meta.n_tokens
    );
    let shared = shared();
    let mut shared = shared.borrow_mut();
    shared.inbox.push(d);
    if let Some(ctx) = &shared.ctx {
        ctx.request_repaint();
    }
    Ok(summary)
}

/// What is selected, in words: `view Features · head 2 · feature 3 · density 1.234e-2`.
#[wasm_bindgen]
pub fn selection() -> String {
    shared().borrow().selection.clone()
}
