//! A creator-platform look-alike served on 127.0.0.1, for tests and the benchmark (feature
//! `test-site`). Login with a session cookie, a DM composer with the conversation, a post
//! scheduler with date/time pickers and media upload, a paginated subscriber list, a
//! rate-limit banner (with HTTP 429) after N actions in a window, content/policy refusals,
//! and a logged-out state. It counts every message per recipient on the server side, which
//! is what the exactly-once tests check.
//!
//! A second skin under `/alt/` has other URLs and markup for the same DM feature, and a
//! scheduler whose time-zone control is a text field, to prove a flow moves to another site
//! by changing only the adapter.
//!
//! Hostile pages under `/hostile/` try to leave the site the way a page can on its own (a
//! script assigning `location`, an iframe, a popup, a form posting elsewhere, a redirect, a
//! download, a file chooser), for the confinement tests. It must never bind anything but
//! loopback.

use crate::flow::{parse_adapter, Adapter};
use crate::guard::{Cap, Caps};
use crate::locator::Cadence;
use crate::runtime::{BrowserEvent, BrowserSettings, KeyStore, Notifier};
use crate::session::SessionKey;
use axum::extract::{Form, Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const USER: &str = "creator";
pub const PASSWORD: &str = "correct horse";
pub const SUBSCRIBERS: usize = 25;
pub const PAGE_SIZE: usize = 10;

/// A scheduled post as the site recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Post {
    pub text: String,
    pub date: String,
    pub time: String,
    /// The zone the scheduler's time-zone control showed when the form was sent.
    pub zone: String,
    pub media: Vec<(String, usize)>,
}

/// The zones the scheduler's time-zone control offers (value, label).
pub const ZONES: [(&str, &str); 6] = [
    ("UTC", "UTC"),
    ("America/New_York", "New York (Eastern)"),
    ("America/Los_Angeles", "Los Angeles (Pacific)"),
    ("Europe/London", "London"),
    ("Europe/Paris", "Paris"),
    ("Asia/Tokyo", "Tokyo"),
];

/// The zone the scheduler shows until changed ([`Site::set_time_zone`]).
pub const DEFAULT_ZONE: &str = "America/New_York";

#[derive(Default)]
struct SiteState {
    sessions: HashSet<String>,
    logins: u32,
    messages: BTreeMap<String, Vec<String>>,
    posts: Vec<Post>,
    /// (max actions, window): beyond it, sends answer 429 with the banner.
    rate_limit: Option<(usize, Duration)>,
    actions: Vec<Instant>,
    rate_limited: u32,
    /// Pause before answering a send (lets tests kill the agent mid-broadcast).
    send_delay: Duration,
    /// Sends that reached the site, counted before the pause (a test kills the agent once
    /// one is in flight).
    sends_received: u32,
    /// The scheduler's preselected zone; `None`: [`DEFAULT_ZONE`].
    time_zone: Option<String>,
    /// Requests that reached `/landing` (where hostile pages try to take the browser).
    landings: u32,
    /// Every request that reached the site, any path.
    requests: u32,
}

/// A running site. Dropping it does not stop the server thread (it ends with the process).
#[derive(Clone)]
pub struct Site {
    pub base_url: String,
    state: Arc<Mutex<SiteState>>,
}

type Shared = Arc<Mutex<SiteState>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, SiteState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn session(headers: &HeaderMap, state: &Shared) -> bool {
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let st = lock(state);
    cookies.split(';').filter_map(|c| c.trim().strip_prefix("sid=")).any(|sid| st.sessions.contains(sid))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{title}</title>\
         <style>body{{font-family:sans-serif}} .fade{{animation:slide .3s}} @keyframes slide{{from{{margin-left:200px}}to{{margin-left:0}}}}</style>\
         </head><body>{body}</body></html>"
    ))
}

fn logged_out(auto: bool) -> Html<String> {
    logged_out_to(auto, None)
}

fn logged_out_to(auto: bool, next: Option<&str>) -> Html<String> {
    let action = match next.filter(|n| n.starts_with('/')) {
        Some(next) => {
            format!("/login?next={}", url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>())
        }
        None => "/login".to_owned(),
    };
    let auto_js = if auto {
        // Stands in for the person typing their password in the headful window.
        format!(
            "<script>setTimeout(() => {{ document.querySelector('#user').value = {u:?}; document.querySelector('#password').value = {p:?}; document.querySelector('#login-form').submit(); }}, 400);</script>",
            u = USER,
            p = PASSWORD
        )
    } else {
        String::new()
    };
    page(
        "Log in",
        &format!(
            "<h1>FanHub</h1><form id=login-form method=post action=\"{action}\">\
             <input id=user name=user placeholder=User><input id=password name=password type=password>\
             <button type=submit>Log in</button></form>{auto_js}"
        ),
    )
}

fn nav() -> &'static str {
    "<nav><span id=account>Logged in as creator</span> <a href=/subscribers>Subscribers</a></nav>\
     <script>localStorage.setItem('fanhub.theme', 'dark'); localStorage.setItem('fanhub.visits', String(Number(localStorage.getItem('fanhub.visits') || 0) + 1));</script>"
}

#[derive(serde::Deserialize)]
struct LoginForm {
    user: String,
    password: String,
}

#[derive(serde::Deserialize, Default)]
struct LoginQuery {
    auto: Option<String>,
    next: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Html<String> {
    logged_out_to(q.auto.is_some(), q.next.as_deref())
}

async fn login(State(state): State<Shared>, Query(q): Query<LoginQuery>, Form(form): Form<LoginForm>) -> Response {
    if form.user != USER || form.password != PASSWORD {
        return (StatusCode::UNAUTHORIZED, logged_out(false)).into_response();
    }
    let sid = format!("{:032x}", rand::random::<u128>());
    {
        let mut st = lock(&state);
        st.sessions.insert(sid.clone());
        st.logins += 1;
    }
    (
        [(header::SET_COOKIE, format!("sid={sid}; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400"))],
        Redirect::to(q.next.as_deref().filter(|n| n.starts_with('/') && !n.starts_with("//")).unwrap_or("/")),
    )
        .into_response()
}

async fn home(State(state): State<Shared>, headers: HeaderMap) -> Html<String> {
    if !session(&headers, &state) {
        return logged_out(false);
    }
    page("Home", &format!("{}<h1>Welcome back</h1>", nav()))
}

#[derive(serde::Deserialize, Default)]
struct ComposeQuery {
    to: Option<String>,
    sent: Option<String>,
}

fn thread(st: &SiteState, to: &str) -> String {
    st.messages
        .get(&to.to_lowercase())
        .map(|list| list.iter().map(|m| format!("<li class=message>{}</li>", esc(m))).collect::<String>())
        .unwrap_or_default()
}

async fn compose(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<ComposeQuery>) -> Html<String> {
    if !session(&headers, &state) {
        return logged_out(false);
    }
    let to = q.to.unwrap_or_default();
    let messages = thread(&lock(&state), &to);
    let sent = if q.sent.is_some() { "<p class=dm-sent>Message sent</p>" } else { "" };
    page(
        "Messages",
        &format!(
            "{nav}<h1>Chat with {to}</h1><ul id=thread>{messages}</ul>{sent}\
             <form id=dm-form method=post action=/messages class=fade>\
             <input type=hidden name=to value=\"{to}\">\
             <textarea id=dm-text name=text rows=3></textarea>\
             <button id=send type=submit>Send</button></form>",
            nav = nav(),
            to = esc(&to)
        ),
    )
}

#[derive(serde::Deserialize)]
struct SendForm {
    to: String,
    text: String,
}

/// Counts the action against the window; true when over the limit.
fn over_limit(st: &mut SiteState) -> bool {
    let Some((max, window)) = st.rate_limit else { return false };
    let now = Instant::now();
    st.actions.retain(|t| now.duration_since(*t) < window);
    if st.actions.len() >= max {
        st.rate_limited += 1;
        return true;
    }
    st.actions.push(now);
    false
}

fn refusal(status: StatusCode, class: &str, text: &str) -> Response {
    (status, page("Refused", &format!("{}<div class={class}>{text}</div>", nav()))).into_response()
}

async fn send(State(state): State<Shared>, headers: HeaderMap, Form(form): Form<SendForm>) -> Response {
    if !session(&headers, &state) {
        return logged_out(false).into_response();
    }
    let delay = {
        let mut st = lock(&state);
        st.sends_received += 1;
        st.send_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if form.text.contains("BLOCKME") {
        return refusal(StatusCode::OK, "content-blocked", "This message was blocked by our content filters.");
    }
    if form.text.contains("POLICYME") {
        return refusal(StatusCode::OK, "policy-violation", "Sending this breaks our terms of service.");
    }
    {
        let mut st = lock(&state);
        if over_limit(&mut st) {
            drop(st);
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limit-banner",
                "You are sending too fast. Try again later.",
            );
        }
        st.messages.entry(form.to.trim().to_lowercase()).or_default().push(form.text.clone());
    }
    let to: String = url::form_urlencoded::byte_serialize(form.to.as_bytes()).collect();
    Redirect::to(&format!("/messages?to={to}&sent=1")).into_response()
}

async fn scheduler(State(state): State<Shared>, headers: HeaderMap) -> Html<String> {
    if !session(&headers, &state) {
        return logged_out(false);
    }
    let current = lock(&state).time_zone.clone().unwrap_or_else(|| DEFAULT_ZONE.to_owned());
    let zones: String = ZONES
        .iter()
        .map(|(value, label)| {
            let selected = if *value == current { " selected" } else { "" };
            format!("<option value=\"{value}\"{selected}>{label}</option>")
        })
        .collect();
    page(
        "New post",
        &format!(
            "{}<h1>Schedule a post</h1><form id=post-form method=post action=/posts enctype=multipart/form-data>\
             <textarea id=post-text name=text></textarea>\
             <label class=upload>Add media <input id=post-media name=media type=file multiple style=\"display:none\"></label>\
             <input id=post-date name=date type=date><input id=post-time name=time type=time>\
             <select id=post-zone name=zone>{zones}</select>\
             <button type=submit disabled id=schedule>Schedule</button></form>\
             <script>const f = document.querySelector('#post-form'); f.addEventListener('input', () => {{\
               document.querySelector('#schedule').disabled = !(f.text.value && f.date.value && f.time.value); }});</script>",
            nav()
        ),
    )
}

/// The `/alt/` skin's scheduler: the time zone is a text field with suggestions (a combobox),
/// prefilled with the site's zone, and the button is a link.
async fn alt_scheduler(State(state): State<Shared>, headers: HeaderMap) -> Html<String> {
    if !session(&headers, &state) {
        return page("Sign in", "<div class=signin-required>Please sign in</div>");
    }
    let current = lock(&state).time_zone.clone().unwrap_or_else(|| DEFAULT_ZONE.to_owned());
    let zones: String = ZONES.iter().map(|(value, _)| format!("<option value=\"{value}\">")).collect();
    page(
        "Plan a post",
        &format!(
            "<header class=me>creator</header><form id=plan method=post action=/posts enctype=multipart/form-data>\
             <div><label>Text <textarea class=body name=text></textarea></label></div>\
             <div><label>Files <input class=files name=media type=file multiple></label></div>\
             <div><label>Day <input class=day name=date type=date></label> <label>At <input class=at name=time type=time></label></div>\
             <div><label>Zone <input class=zone name=zone list=zones value=\"{current}\" autocomplete=off></label><datalist id=zones>{zones}</datalist></div>\
             <a href=# class=btn id=plan-it>Plan it</a></form>\
             <script>document.querySelector('#plan-it').addEventListener('click', (e) => {{ e.preventDefault(); document.querySelector('#plan').submit(); }});</script>",
            current = esc(&current)
        ),
    )
}

async fn schedule(State(state): State<Shared>, headers: HeaderMap, mut multipart: Multipart) -> Response {
    if !session(&headers, &state) {
        return logged_out(false).into_response();
    }
    let mut post =
        Post { text: String::new(), date: String::new(), time: String::new(), zone: String::new(), media: Vec::new() };
    while let Ok(Some(field)) = multipart.next_field().await {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let Ok(bytes) = field.bytes().await else { break };
        match name.as_str() {
            "text" => post.text = String::from_utf8_lossy(&bytes).into_owned(),
            "date" => post.date = String::from_utf8_lossy(&bytes).into_owned(),
            "time" => post.time = String::from_utf8_lossy(&bytes).into_owned(),
            "zone" => post.zone = String::from_utf8_lossy(&bytes).into_owned(),
            "media" if !bytes.is_empty() => post.media.push((file_name.unwrap_or_default(), bytes.len())),
            _ => {}
        }
    }
    {
        let mut st = lock(&state);
        if over_limit(&mut st) {
            drop(st);
            return refusal(StatusCode::TOO_MANY_REQUESTS, "rate-limit-banner", "Slow down.");
        }
        st.posts.push(post.clone());
    }
    page(
        "Scheduled",
        &format!(
            "{}<p class=post-scheduled>Scheduled for {} {} ({})</p>",
            nav(),
            esc(&post.date),
            esc(&post.time),
            esc(&post.zone)
        ),
    )
    .into_response()
}

#[derive(serde::Deserialize, Default)]
struct PageQuery {
    page: Option<usize>,
}

async fn subscribers(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Html<String> {
    if !session(&headers, &state) {
        return logged_out(false);
    }
    let page_no = q.page.unwrap_or(1).max(1);
    let start = (page_no - 1) * PAGE_SIZE;
    let rows: String = (start..(start + PAGE_SIZE).min(SUBSCRIBERS))
        .map(|i| {
            format!(
                "<tr class=subscriber><td class=name>Fan {i:02}</td><td class=handle>@fan{i:02}</td><td class=since data-date=\"2024-01-{:02}\">Jan {}</td></tr>",
                i % 28 + 1,
                i % 28 + 1
            )
        })
        .collect();
    let next = if start + PAGE_SIZE < SUBSCRIBERS {
        format!("<a class=next-page href=\"/subscribers?page={}\">Next</a>", page_no + 1)
    } else {
        String::new()
    };
    page("Subscribers", &format!("{}<table id=subs>{rows}</table>{next}", nav()))
}

async fn alt_inbox(State(state): State<Shared>, headers: HeaderMap, Path(to): Path<String>) -> Html<String> {
    if !session(&headers, &state) {
        return page("Sign in", "<div class=signin-required>Please sign in</div>");
    }
    page(
        "Inbox",
        &format!(
            "<header class=me>creator</header><section class=conversation data-peer=\"{to}\">\
             <div contenteditable=true class=composer></div><a href=# class=btn id=deliver>Deliver</a></section>\
             <script>document.querySelector('#deliver').addEventListener('click', async (e) => {{ e.preventDefault();\
               const text = document.querySelector('.composer').textContent;\
               const r = await fetch('/alt/api/send', {{method:'POST', headers:{{'content-type':'application/json'}}, body: JSON.stringify({{to:{to_js}, text}})}});\
               const d = document.createElement('div'); d.className = r.ok ? 'delivered' : (r.status === 429 ? 'slowdown' : 'failed');\
               d.textContent = r.ok ? 'Delivered' : 'Slow down'; document.body.appendChild(d); }});</script>",
            to = esc(&to),
            to_js = serde_json::to_string(&to).unwrap_or_default()
        ),
    )
}

#[derive(serde::Deserialize)]
struct AltSend {
    to: String,
    text: String,
}

async fn alt_send(
    State(state): State<Shared>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<AltSend>,
) -> StatusCode {
    if !session(&headers, &state) {
        return StatusCode::UNAUTHORIZED;
    }
    let mut st = lock(&state);
    if over_limit(&mut st) {
        return StatusCode::TOO_MANY_REQUESTS;
    }
    st.messages.entry(body.to.trim().to_lowercase()).or_default().push(body.text);
    StatusCode::OK
}

#[derive(serde::Deserialize, Default)]
struct HostileQuery {
    to: Option<String>,
}

/// A page that tries to take the browser to `?to=URL` by itself (see the module docs); the
/// element a flow clicks, when one is needed, is `#go`. Each page shows `#hostile`.
async fn hostile(Path(kind): Path<String>, Query(q): Query<HostileQuery>) -> Response {
    let to = q.to.unwrap_or_else(|| "about:blank".to_owned());
    let attr = esc(&to);
    let js = serde_json::to_string(&to).unwrap_or_default();
    let body = match kind.as_str() {
        "assign" => format!("<script>setTimeout(() => {{ location.href = {js}; }}, 50);</script>"),
        "iframe" => format!("<iframe id=frame src=\"{attr}\"></iframe>"),
        "link-popup" => format!("<a id=go href=\"{attr}\" target=_blank>open</a>"),
        "window-open" => format!("<button id=go onclick='window.open({js})'>open</button>"),
        "form" => {
            format!("<form method=post action=\"{attr}\"><input name=note value=x><button id=go>send</button></form>")
        }
        "redirect" => return Redirect::temporary(&to).into_response(),
        "download" => "<a id=go href=/hostile-file/secret.txt download>get</a>".to_owned(),
        "file-chooser" => {
            "<input type=file id=pick><button id=go onclick=\"document.querySelector('#pick').click()\">pick</button>"
                .to_owned()
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    page("Hostile", &format!("<p id=hostile>{}</p>{body}", esc(&kind))).into_response()
}

/// A file the site serves as an attachment (a download).
async fn hostile_file(Path(name): Path<String>) -> Response {
    (
        [
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", esc(&name))),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        ],
        "downloaded bytes",
    )
        .into_response()
}

/// Where a hostile page tries to go: `#landed` shows the browser got there, and the site
/// counts every request that arrived ([`Site::landings`]).
async fn landing(State(state): State<Shared>) -> Html<String> {
    lock(&state).landings += 1;
    page("Landed", "<p id=landed>landed</p>")
}

async fn count_request(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    lock(&state).requests += 1;
    next.run(request).await
}

impl Site {
    /// Serves on a free loopback port from its own thread and runtime, so sync and async
    /// tests can both use it.
    pub fn start() -> std::io::Result<Site> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let state: Shared = Arc::new(Mutex::new(SiteState::default()));
        let app = Router::new()
            .route("/", get(home))
            .route("/login", get(login_page).post(login))
            .route("/messages", get(compose).post(send))
            .route("/posts/new", get(scheduler))
            .route("/posts", post(schedule))
            .route("/subscribers", get(subscribers))
            .route("/alt/inbox/{to}", get(alt_inbox))
            .route("/alt/api/send", post(alt_send))
            .route("/alt/posts/new", get(alt_scheduler))
            .route("/hostile/{kind}", get(hostile))
            .route("/hostile-file/{name}", get(hostile_file))
            .route("/landing", get(landing).post(landing))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), count_request))
            .with_state(Arc::clone(&state));
        std::thread::Builder::new().name("test-site".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
                Ok(r) => r,
                Err(e) => return eprintln!("test site: {e}"),
            };
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let _ = axum::serve(listener, app).await;
                    }
                    Err(e) => eprintln!("test site: {e}"),
                }
            });
        })?;
        Ok(Site { base_url, state })
    }

    /// The adapter of the main skin, in YAML as a person would write it.
    pub fn adapter_yaml(&self) -> String {
        format!(
            r##"name: fanhub
baseUrl: {base}
urls:
  login: /login
  compose: /messages?to={{{{params.recipient|url}}}}
  scheduler: /posts/new
  subscribers: /subscribers
markers:
  loggedIn: "#account"
  loggedOut: "#login-form"
  rateLimited: ".rate-limit-banner"
  contentBlocked: ".content-blocked"
  policyViolation: ".policy-violation"
selectors:
  composeBox: "#dm-text"
  sendButton: "form#dm-form >> text=Send"
  sentConfirmation: ".dm-sent"
  sentMessage: "#thread .message"
  postText: "#post-text"
  mediaInput: "#post-media"
  dateInput: "#post-date"
  timeInput: "#post-time"
  timeZoneInput: "#post-zone"
  scheduleButton: 'text="Schedule"'
  scheduledConfirmation: ".post-scheduled"
  nextPage: "a.next-page"
lists:
  subscribers:
    row: "tr.subscriber"
    fields:
      name: {{selector: ".name"}}
      handle: {{selector: ".handle"}}
      since: {{selector: ".since", attr: "data-date"}}
settings:
  timeZone: America/New_York
  timeoutMs: 5000
  rateLimitBackoffMs: 1000
"##,
            base = self.base_url
        )
    }

    pub fn adapter(&self) -> Adapter {
        match parse_adapter(&self.adapter_yaml()) {
            Ok(adapter) => adapter,
            Err(e) => panic!("the test site's own adapter must parse: {e}"),
        }
    }

    /// The site's adapter with its login page set to `/login?auto=1`, which logs in at once:
    /// it stands in for the person typing in the login window, so tests run headless.
    pub fn auto_login_adapter(&self) -> Adapter {
        let mut adapter = self.adapter();
        adapter.urls.insert("login".into(), "/login?auto=1".into());
        adapter
    }

    /// The adapter of the `/alt/` skin: other URLs, markup and texts, same DM feature.
    pub fn alt_adapter(&self) -> Adapter {
        let yaml = format!(
            r##"name: althub
baseUrl: {base}
urls:
  login: /login?next=/alt/inbox/me
  compose: /alt/inbox/{{{{params.recipient|url}}}}
markers:
  loggedIn: "header.me"
  loggedOut: ".signin-required"
  rateLimited: ".slowdown"
selectors:
  composeBox: ".conversation .composer"
  sendButton: "text=Deliver"
  sentConfirmation: ".delivered"
settings:
  timeoutMs: 5000
"##,
            base = self.base_url
        );
        match parse_adapter(&yaml) {
            Ok(adapter) => adapter,
            Err(e) => panic!("the alt adapter must parse: {e}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Messages the site received for `recipient`, oldest first.
    pub fn messages_to(&self, recipient: &str) -> Vec<String> {
        lock(&self.state).messages.get(&recipient.to_lowercase()).cloned().unwrap_or_default()
    }

    pub fn message_counts(&self) -> BTreeMap<String, usize> {
        lock(&self.state).messages.iter().map(|(k, v)| (k.clone(), v.len())).collect()
    }

    pub fn total_messages(&self) -> usize {
        lock(&self.state).messages.values().map(Vec::len).sum()
    }

    pub fn posts(&self) -> Vec<Post> {
        lock(&self.state).posts.clone()
    }

    pub fn logins(&self) -> u32 {
        lock(&self.state).logins
    }

    /// Requests that reached `/landing`: zero when every hostile page was stopped before its
    /// request left the browser.
    pub fn landings(&self) -> u32 {
        lock(&self.state).landings
    }

    /// Every request that reached the site: zero when nothing got through to it.
    pub fn requests(&self) -> u32 {
        lock(&self.state).requests
    }

    pub fn rate_limited_count(&self) -> u32 {
        lock(&self.state).rate_limited
    }

    /// At most `max` sends/posts per `window`; beyond, 429 and the banner.
    pub fn set_rate_limit(&self, limit: Option<(usize, Duration)>) {
        let mut st = lock(&self.state);
        st.rate_limit = limit;
        st.actions.clear();
    }

    /// The zone the scheduler's time-zone control shows until a person (or flow) changes it.
    pub fn set_time_zone(&self, zone: &str) {
        lock(&self.state).time_zone = Some(zone.to_owned());
    }

    /// Sends (`POST /messages`) that reached the site so far, delivered or not yet.
    pub fn sends_received(&self) -> u32 {
        lock(&self.state).sends_received
    }

    pub fn set_send_delay(&self, delay: Duration) {
        lock(&self.state).send_delay = delay;
    }

    /// Ends every session: the next page load shows the logged-out state.
    pub fn logout_everyone(&self) {
        lock(&self.state).sessions.clear();
    }

    /// A valid session cookie value, as a login would set it (for tests seeding state).
    pub fn mint_session(&self) -> String {
        let sid = format!("{:032x}", rand::random::<u128>());
        lock(&self.state).sessions.insert(sid.clone());
        sid
    }

    /// Counts per recipient as a sorted map, for assertions.
    pub fn counts_of(&self, recipients: &[String]) -> HashMap<String, usize> {
        let st = lock(&self.state);
        recipients.iter().map(|r| (r.clone(), st.messages.get(&r.to_lowercase()).map_or(0, Vec::len))).collect()
    }
}

/// The tests' stand-in for the keychain: one fixed session key.
pub struct FixedKey(pub [u8; 32]);

impl KeyStore for FixedKey {
    fn session_key(&self) -> Result<SessionKey, String> {
        Ok(SessionKey::from_bytes(self.0))
    }
}

/// A notifier that drops every event.
pub struct Quiet;

impl Notifier for Quiet {
    fn notify(&self, _: BrowserEvent) {}
}

/// Settings for a test against this site: no pauses between actions or recipients, quick
/// typing, and caps far above what a test sends (an embedder may set caps; settings and the
/// environment can only lower them).
pub fn quick_settings(dir: &std::path::Path, profile: &str) -> BrowserSettings {
    let mut s = BrowserSettings::new(dir.to_path_buf(), profile.to_owned()).from_env();
    s.pacing = Cadence::OFF;
    s.typing = Cadence { min: Duration::from_millis(1), max: Duration::from_millis(3) };
    s.recipient_pacing = Cadence::OFF;
    let lots = Cap { per_hour: 10_000, burst: 1_000 };
    s.caps = Caps(["dm", "post", "scrape", "flow"].iter().map(|a| ((*a).to_owned(), lots)).collect());
    s
}
