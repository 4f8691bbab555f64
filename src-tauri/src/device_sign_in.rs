//! The window's one pending device sign-in (RFC 8628): the codes it shows, the QR code of
//! the approval page, and the way to cancel the wait.
//!
//! It owns the slot between "show me a code" and "the person approved it": at most one
//! sign-in is pending, a new one replaces (and so cancels) the last. It must never poll the
//! hub itself (the core's `finish_device_login` does, by the RFC's rules), never hand the
//! device code to the window, and never open any page but the pending sign-in's own.

use edge_agent::{AgentError, DeviceLogin, DeviceLoginCodes};
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};
use serde::Serialize;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// What the window shows while the person approves: the codes and the QR code as SVG.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSignInView {
    #[serde(flatten)]
    pub codes: DeviceLoginCodes,
    /// An `<svg>` of `verification_uri_complete`.
    pub qr_svg: String,
}

#[derive(Default)]
struct Slot {
    /// Taken by the wait; `None` once it started or after a cancel.
    login: Option<DeviceLogin>,
    /// What the open-page command may open.
    codes: Option<DeviceLoginCodes>,
    /// Dropping or firing it ends the wait.
    cancel: Option<oneshot::Sender<()>>,
    /// Ends the wait when fired; taken with the login.
    cancelled: Option<oneshot::Receiver<()>>,
}

/// Tauri state: the pending sign-in, if any.
#[derive(Default)]
pub struct DeviceSignIn {
    slot: Mutex<Slot>,
}

impl DeviceSignIn {
    /// Keeps `login` as the pending sign-in (cancelling any earlier one) and says what to
    /// show.
    pub fn begin(&self, login: DeviceLogin) -> Result<DeviceSignInView, AgentError> {
        let codes = login.codes().clone();
        let qr_svg = qr_svg(&codes.verification_uri_complete)?;
        let (cancel, cancelled) = oneshot::channel();
        let mut slot = self.lock()?;
        // Replacing the sender drops the earlier one, which ends an earlier wait.
        *slot =
            Slot { login: Some(login), codes: Some(codes.clone()), cancel: Some(cancel), cancelled: Some(cancelled) };
        Ok(DeviceSignInView { codes, qr_svg })
    }

    /// The pending sign-in to wait for, and what ends the wait early.
    pub fn take(&self) -> Result<(DeviceLogin, oneshot::Receiver<()>), AgentError> {
        let mut slot = self.lock()?;
        match (slot.login.take(), slot.cancelled.take()) {
            (Some(login), Some(cancelled)) => Ok((login, cancelled)),
            _ => Err(AgentError::InvalidSetting(
                "no device sign-in is waiting (it was cancelled or already finished); ask for a new code".into(),
            )),
        }
    }

    /// Ends the pending sign-in, waiting or not; whether there was one.
    pub fn cancel(&self) -> Result<bool, AgentError> {
        let mut slot = self.lock()?;
        let had = slot.codes.is_some();
        if let Some(cancel) = slot.cancel.take() {
            let _ = cancel.send(());
        }
        *slot = Slot::default();
        Ok(had)
    }

    /// Forgets the finished sign-in (approved or failed).
    pub fn finished(&self) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Slot::default();
        }
    }

    /// `url` if it is the pending sign-in's approval page (with or without the code filled
    /// in): the window may ask to open that and nothing else.
    pub fn approval_page(&self, url: &str) -> Result<String, AgentError> {
        approval_page(self.lock()?.codes.as_ref(), url)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Slot>, AgentError> {
        self.slot.lock().map_err(|_| AgentError::Internal("device sign-in lock poisoned".into()))
    }
}

/// The QR code of `url` as a standalone SVG, black on white whatever the window's theme (a
/// phone's camera reads dark-on-light), with the quiet zone scanners need.
pub fn qr_svg(url: &str) -> Result<String, AgentError> {
    Ok(qr_code(url)?
        .render()
        .min_dimensions(160, 160)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .quiet_zone(true)
        .build())
}

fn approval_page(codes: Option<&DeviceLoginCodes>, url: &str) -> Result<String, AgentError> {
    match codes {
        // Exact matches only: a prefix or a look-alike could send the person elsewhere.
        Some(codes) if url == codes.verification_uri_complete || url == codes.verification_uri => Ok(url.to_owned()),
        Some(_) => Err(AgentError::InvalidSetting(format!(
            "{url:?} is not the approval page of the pending sign-in; only that page can be opened from here"
        ))),
        None => Err(AgentError::InvalidSetting("no device sign-in is pending; ask for a new code".into())),
    }
}

fn qr_code(url: &str) -> Result<QrCode, AgentError> {
    QrCode::with_error_correction_level(url.as_bytes(), EcLevel::M)
        .map_err(|e| AgentError::HubProtocol(format!("the approval page's address cannot be put in a QR code: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qr_code_is_an_svg_whose_modules_encode_the_url() {
        let url = "http://127.0.0.1:8787/device?user_code=ABCD-EFGH";
        let svg = qr_svg(url).unwrap();
        assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("<svg") && svg.contains("</svg>"));
        // The same URL gives the same picture, another URL another one: the picture carries
        // the URL, not a placeholder.
        assert_eq!(svg, qr_svg(url).unwrap());
        assert_ne!(svg, qr_svg("http://127.0.0.1:8787/device?user_code=ABCD-EFGJ").unwrap());
    }

    /// Reads the code `qr_svg` draws with an independent decoder, from a bitmap of its
    /// modules with the quiet zone around them, as a phone's camera would see it.
    #[test]
    fn a_qr_decoder_reads_the_complete_url_back() {
        let url = "https://hub.example.com/device?user_code=WDJB-MJHT";
        let code = qr_code(url).unwrap();
        let width = code.width();
        let colors = code.to_colors();
        let (quiet, scale) = (4, 4);
        let side = (width + 2 * quiet) * scale;
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| {
            let (mx, my) = ((x / scale) as isize - quiet as isize, (y / scale) as isize - quiet as isize);
            let dark = mx >= 0
                && my >= 0
                && (mx as usize) < width
                && (my as usize) < width
                && colors[my as usize * width + mx as usize] == qrcode::Color::Dark;
            if dark {
                0
            } else {
                255
            }
        });
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1);
        let (_, content) = grids[0].decode().unwrap();
        assert_eq!(content, url);
    }

    #[test]
    fn an_address_too_long_for_a_qr_code_is_an_error_not_a_panic() {
        let url = format!("https://hub.example.com/device?user_code={}", "A".repeat(5000));
        let error = qr_svg(&url).unwrap_err();
        assert_eq!(error.code(), "hub_protocol");
        assert!(error.to_string().contains("cannot be put in a QR code"), "{error}");
    }

    #[test]
    fn only_the_pending_sign_ins_own_page_can_be_opened() {
        let codes = DeviceLoginCodes {
            hub_url: "https://hub.example.com/".into(),
            user_code: "WDJB-MJHT".into(),
            verification_uri: "https://hub.example.com/device".into(),
            verification_uri_complete: "https://hub.example.com/device?user_code=WDJB-MJHT".into(),
            expires_in_secs: 600,
            interval_secs: 5,
        };
        for url in [&codes.verification_uri, &codes.verification_uri_complete] {
            assert_eq!(approval_page(Some(&codes), url).unwrap(), *url);
        }
        for url in [
            "https://hub.example.com/device?user_code=AAAA-BBBB",
            "https://hub.example.com/device.evil.example/",
            "file:///etc/passwd",
            "https://hub.example.com/device?user_code=WDJB-MJHT&next=https://evil.example",
            "",
        ] {
            let error = approval_page(Some(&codes), url).unwrap_err();
            assert!(error.to_string().contains("only that page can be opened"), "{url}: {error}");
        }
    }

    #[test]
    fn without_a_pending_sign_in_nothing_can_be_taken_or_opened() {
        let slot = DeviceSignIn::default();
        assert!(slot.take().unwrap_err().to_string().contains("ask for a new code"));
        assert!(slot.approval_page("https://evil.example/").is_err());
        assert!(!slot.cancel().unwrap());
    }
}
