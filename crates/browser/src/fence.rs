//! The fence around the job pages of the warm browser, at the DevTools level, for what a page
//! starts by itself (a script assigning `location`, a link, a form, a redirect, a frame, a
//! popup). Every document request of the browser is paused (`Fetch` on the browser target,
//! which sees the requests of every page, frame and popup before they leave) and let through
//! only when the job that owns it declared its origin ([`Origins`]); anything else fails
//! `BlockedByClient`, is written to the local log and ends that job `POLICY_VIOLATION`. A new
//! window of a job is closed before it loads anything; a frame that commits a document no
//! request went out for (`data:`) ends the job too; downloads are denied in every context.
//!
//! It owns the list of job contexts in the browser with their origins and first refusal.
//! It must never let a document through for a frame it cannot attribute to a job (it fails
//! closed), and decides nothing about subresources (images, scripts, fetches), which are the
//! egress gate's.

use crate::confine::Origins;
use crate::error::BrowserError;
use chromiumoxide::browser::Browser;
use chromiumoxide::cdp::browser_protocol::browser::{
    BrowserContextId, SetDownloadBehaviorBehavior, SetDownloadBehaviorParams,
};
use chromiumoxide::cdp::browser_protocol::fetch::{
    ContinueRequestParams, EnableParams, EventRequestPaused, FailRequestParams, RequestPattern,
};
use chromiumoxide::cdp::browser_protocol::network::{ErrorReason, ResourceType};
use chromiumoxide::cdp::browser_protocol::page::{EventFrameNavigated, FrameTree, GetFrameTreeParams};
use chromiumoxide::cdp::browser_protocol::target::{
    CloseTargetParams, EventTargetCreated, GetTargetInfoParams, TargetId, TargetInfo,
};
use chromiumoxide::listeners::EventStream;
use chromiumoxide::Page;
use futures::StreamExt;
use std::sync::{Arc, Mutex};

/// The first thing the fence refused in one job, shared by the fence (which records it) and
/// the job's driver (which ends the job with it).
#[derive(Debug, Clone, Default)]
pub struct Refusal(Arc<Mutex<Option<String>>>);

impl Refusal {
    /// Keeps the first refusal: it is the cause, later ones are its consequences.
    pub fn record(&self, message: String) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(message);
        }
    }

    /// `POLICY_VIOLATION` once something was refused.
    pub fn check(&self) -> Result<(), BrowserError> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(message) => Err(BrowserError::NotAllowed(message.clone())),
            None => Ok(()),
        }
    }
}

/// One job's context in the browser.
#[derive(Clone)]
struct Fenced {
    context: BrowserContextId,
    /// The job's page, once created (the first page of the context is the job's own).
    page: Option<Page>,
    origins: Origins,
    refusal: Refusal,
}

/// The job contexts of one warm browser (kept across relaunches of the browser).
#[derive(Clone, Default)]
pub struct Fence {
    jobs: Arc<Mutex<Vec<Fenced>>>,
}

/// What the fence decided about one paused document request.
enum Decision {
    Continue,
    Refuse { refusal: Option<Refusal>, message: String, close: Option<TargetId> },
}

impl Fence {
    fn jobs(&self) -> std::sync::MutexGuard<'_, Vec<Fenced>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job context whose documents must come from `origins`; its refusals land in the
    /// returned [`Refusal`].
    pub(crate) fn register(&self, context: BrowserContextId, origins: Origins) -> Refusal {
        let refusal = Refusal::default();
        self.jobs().push(Fenced { context, page: None, origins, refusal: refusal.clone() });
        refusal
    }

    pub(crate) fn set_page(&self, context: &BrowserContextId, page: Page) {
        if let Some(job) = self.jobs().iter_mut().find(|j| &j.context == context) {
            job.page = Some(page);
        }
    }

    pub(crate) fn unregister(&self, context: &BrowserContextId) {
        self.jobs().retain(|j| &j.context != context);
    }

    fn by_page(&self, target: &str) -> Option<Fenced> {
        self.jobs().iter().find(|j| j.page.as_ref().is_some_and(|p| p.target_id().as_ref() == target)).cloned()
    }

    fn by_context(&self, context: &BrowserContextId) -> Option<Fenced> {
        self.jobs().iter().find(|j| &j.context == context).cloned()
    }

    fn all(&self) -> Vec<Fenced> {
        self.jobs().clone()
    }

    /// Whose document request this is, and whether it may go out.
    async fn judge(&self, browser: &Browser, event: &EventRequestPaused) -> Decision {
        let frame = event.frame_id.as_ref();
        let url = event.request.url.as_str();
        let check = |job: Fenced| match job.origins.check(url) {
            Ok(()) => Decision::Continue,
            Err(e) => Decision::Refuse { refusal: Some(job.refusal), message: e.to_string(), close: None },
        };
        // The main frame of a job's page has the page's target id.
        if let Some(job) = self.by_page(frame) {
            return check(job);
        }
        // A target of its own: a new window (popup), or a frame in another process.
        let info = browser.execute(GetTargetInfoParams::builder().target_id(frame.to_owned()).build()).await;
        if let Ok(info) = info {
            let TargetInfo { target_id, r#type, browser_context_id, .. } = info.result.target_info;
            if let Some(job) = browser_context_id.as_ref().and_then(|c| self.by_context(c)) {
                if r#type == "page" {
                    return Decision::Refuse {
                        refusal: Some(job.refusal),
                        message: new_window(url),
                        close: Some(target_id),
                    };
                }
                return check(job);
            }
        }
        // A frame inside a job's page.
        for job in self.all() {
            let Some(page) = job.page.clone() else { continue };
            if let Ok(tree) = page.execute(GetFrameTreeParams::default()).await {
                if contains(&tree.result.frame_tree, frame) {
                    return check(job);
                }
            }
        }
        Decision::Refuse {
            refusal: None,
            message: format!(
                "navigation refused: a frame no running job owns asked for {}",
                crate::confine::shown(url)
            ),
            close: None,
        }
    }
}

fn contains(tree: &FrameTree, frame: &str) -> bool {
    tree.frame.id.as_ref() == frame || tree.child_frames.iter().flatten().any(|child| contains(child, frame))
}

fn new_window(url: &str) -> String {
    let shown = if url.is_empty() || url == "about:blank" {
        "an empty window".to_owned()
    } else {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u.origin().ascii_serialization(),
            _ => format!("a {} URL", url.split(':').next().unwrap_or("strange")),
        }
    };
    format!(
        "navigation refused: the page opened a new window ({shown}); a browser job works in one page, so the agent \
         closed it"
    )
}

/// The browser-level streams the fence reads.
pub(crate) struct Watch {
    paused: EventStream<EventRequestPaused>,
    created: EventStream<EventTargetCreated>,
}

/// Starts fencing a browser that was just launched: every document request is paused for
/// [`guard`], and downloads are denied in the default context (each job context denies its
/// own when it is created).
pub(crate) async fn arm(browser: &Browser) -> Result<Watch, BrowserError> {
    let paused = browser
        .event_listener::<EventRequestPaused>()
        .await
        .map_err(|e| BrowserError::from_cdp("listening for document requests", e))?;
    let created = browser
        .event_listener::<EventTargetCreated>()
        .await
        .map_err(|e| BrowserError::from_cdp("listening for new windows", e))?;
    let documents = RequestPattern::builder().url_pattern("*").resource_type(ResourceType::Document).build();
    browser
        .execute(EnableParams::builder().pattern(documents).build())
        .await
        .map_err(|e| BrowserError::from_cdp("pausing document requests", e))?;
    deny_downloads(browser, None).await?;
    Ok(Watch { paused, created })
}

/// Downloads are off: a job never writes a file the site chose onto the machine.
pub(crate) async fn deny_downloads(browser: &Browser, context: Option<BrowserContextId>) -> Result<(), BrowserError> {
    let mut params = SetDownloadBehaviorParams::new(SetDownloadBehaviorBehavior::Deny);
    params.browser_context_id = context;
    browser.execute(params).await.map_err(|e| BrowserError::from_cdp("denying downloads", e))?;
    Ok(())
}

/// The warm browser's slot, where the fence finds the `Browser` to answer through.
pub(crate) type Running = Arc<tokio::sync::Mutex<Option<crate::launch::RunningBrowser>>>;

/// Judges every paused document request and closes the new windows of job contexts, until
/// the browser's connection ends.
pub(crate) async fn guard(fence: Fence, running: Running, mut watch: Watch) {
    loop {
        tokio::select! {
            event = watch.paused.next() => {
                let Some(event) = event else { break };
                let slot = running.lock().await;
                let Some(browser) = slot.as_ref().map(|r| &r.browser) else { break };
                settle(&fence, browser, &event).await;
            }
            event = watch.created.next() => {
                let Some(event) = event else { break };
                let info = &event.target_info;
                if info.r#type != "page" {
                    continue;
                }
                let Some(job) = info.browser_context_id.as_ref().and_then(|c| fence.by_context(c)) else { continue };
                // The context's first page is the job's own (created before it is known here).
                let Some(page) = job.page.as_ref() else { continue };
                if page.target_id() == &info.target_id {
                    continue;
                }
                let message = new_window(&info.url);
                tracing::warn!(origins = %job.origins.list(), "{message}");
                job.refusal.record(message);
                let slot = running.lock().await;
                if let Some(running) = slot.as_ref() {
                    let _ = running.browser.execute(CloseTargetParams::new(info.target_id.clone())).await;
                }
            }
        }
    }
}

async fn settle(fence: &Fence, browser: &Browser, event: &EventRequestPaused) {
    match fence.judge(browser, event).await {
        Decision::Continue => {
            if let Err(e) = browser.execute(ContinueRequestParams::new(event.request_id.clone())).await {
                tracing::debug!(error = %e, "a document request ended before it was let through");
            }
        }
        Decision::Refuse { refusal, message, close } => {
            tracing::warn!("{message}");
            // Recorded before the request fails, so the job sees why its navigation failed.
            if let Some(refusal) = refusal {
                refusal.record(message);
            }
            let _ =
                browser.execute(FailRequestParams::new(event.request_id.clone(), ErrorReason::BlockedByClient)).await;
            if let Some(target) = close {
                let _ = browser.execute(CloseTargetParams::new(target)).await;
            }
        }
    }
}

/// Watches the frames of a job's page: a frame that commits a document its origins do not
/// allow (one no request went out for, such as `data:`) ends the job.
pub(crate) async fn watch_frames(page: &Page, origins: Origins, refusal: Refusal) -> Result<(), BrowserError> {
    let mut navigated =
        page.event_listener::<EventFrameNavigated>().await.map_err(|e| BrowserError::from_cdp("watching frames", e))?;
    tokio::spawn(async move {
        while let Some(event) = navigated.next().await {
            if let Err(e) = origins.check_committed(&event.frame.url) {
                let message = e.to_string();
                tracing::warn!("{message}");
                refusal.record(message);
            }
        }
    });
    Ok(())
}
