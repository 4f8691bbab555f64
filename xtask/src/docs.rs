//! `cargo xtask docs`: the documents a person or an operator is handed, as HTML and PDF in
//! `target/docs/`: the install guides in English and French and the hub operations guide.
//! Markdown is rendered by `pulldown-cmark` (tables, footnotes, strikethrough as GitHub
//! shows them), wrapped in one print-friendly page, and printed to PDF by Debian's Chromium
//! headless, the same engine the people reading the HTML use. Links between the guides
//! point at the rendered siblings; images resolve against `docs/`, so the screenshots the
//! tray tests write there appear in both formats.
//!
//! The release dry run calls this too: a guide that no longer renders fails the release.

use crate::util::root;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The guides shipped with a release, by file name under `docs/`.
pub const GUIDES: [&str; 3] = ["edge_agent_install.md", "edge_agent_install.fr.md", "hub_operations.md"];
/// A print that has not ended by then is a hung browser.
const PRINT_TIMEOUT: Duration = Duration::from_secs(90);

const STYLE: &str = "body{font-family:'DejaVu Sans',sans-serif;max-width:46em;margin:2em auto;padding:0 1em;\
line-height:1.5;color:#1b1b1b}code,pre{font-family:'DejaVu Sans Mono',monospace;font-size:.9em}\
pre{background:#f4f4f4;padding:.8em;overflow-x:auto;white-space:pre-wrap}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}img{max-width:100%}\
h1,h2,h3{line-height:1.2}@media print{body{margin:0;max-width:none}a{color:inherit}}";

pub fn run(args: &[&str]) -> Result<()> {
    if let Some(other) = args.first() {
        bail!("unknown docs option {other:?}: `cargo xtask docs` takes none");
    }
    let written = render_all()?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Every guide to `target/docs/NAME.html` and `NAME.pdf`; returns the files written.
pub fn render_all() -> Result<Vec<PathBuf>> {
    if !crate::util::have("chromium") {
        bail!("`cargo xtask docs` prints the PDFs with Chromium: apt-get install --no-install-recommends chromium");
    }
    let chromium = PathBuf::from("chromium");
    let out = root().join("target/docs");
    std::fs::create_dir_all(&out)?;
    let mut written = Vec::new();
    for guide in GUIDES {
        let source = root().join("docs").join(guide);
        let markdown = std::fs::read_to_string(&source).with_context(|| format!("reading {}", source.display()))?;
        let stem = guide.trim_end_matches(".md");
        let html_path = out.join(format!("{stem}.html"));
        let lang = if stem.ends_with(".fr") { "fr" } else { "en" };
        std::fs::write(&html_path, page(&markdown, lang, &root().join("docs")))?;
        let pdf_path = out.join(format!("{stem}.pdf"));
        print_pdf(&chromium, &html_path, &pdf_path)?;
        written.push(html_path);
        written.push(pdf_path);
    }
    Ok(written)
}

/// One standalone HTML page of `markdown` in `lang` (what screen readers and hyphenation
/// go by), its title from the first heading, images relative to `images_from`.
fn page(markdown: &str, lang: &str, images_from: &Path) -> String {
    use pulldown_cmark::{html, CowStr, Event, Options, Parser, Tag};
    let options = Options::ENABLE_TABLES | Options::ENABLE_FOOTNOTES | Options::ENABLE_STRIKETHROUGH;
    let events = Parser::new_ext(markdown, options).map(|event| match event {
        // A link to another guide opens its rendered page, not the Markdown source.
        Event::Start(Tag::Link { link_type, dest_url, title, id }) if is_local_markdown(&dest_url) => {
            let (file, anchor) = dest_url.split_once('#').map_or((&*dest_url, ""), |(f, a)| (f, a));
            let anchor = if anchor.is_empty() { String::new() } else { format!("#{anchor}") };
            let dest_url = CowStr::from(format!("{}.html{anchor}", file.trim_end_matches(".md")));
            Event::Start(Tag::Link { link_type, dest_url, title, id })
        }
        other => other,
    });
    let mut body = String::new();
    html::push_html(&mut body, events);
    let title = markdown.lines().find_map(|l| l.strip_prefix("# ")).map(escape).unwrap_or_else(|| "Edge".to_owned());
    format!(
        "<!doctype html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <base href=\"file://{}/\"><style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        images_from.display()
    )
}

fn is_local_markdown(url: &str) -> bool {
    let file = url.split('#').next().unwrap_or_default();
    file.ends_with(".md") && !file.contains("://") && !file.contains('/')
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Chromium headless prints `html` to `pdf`; the result must be a PDF of at least a page.
fn print_pdf(chromium: &Path, html: &Path, pdf: &Path) -> Result<()> {
    let _ = std::fs::remove_file(pdf);
    let profile = edge_e2e::scratch_dir("docs-chromium")?;
    let mut child = Command::new(chromium)
        .args(["--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check"])
        // As root, Chromium refuses to start with its sandbox; the page is our own file.
        .args(["--no-sandbox", "--no-pdf-header-footer"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", chromium.display()))?;
    let Some(status) = crate::util::wait_or_kill(&mut child, PRINT_TIMEOUT)? else {
        bail!("Chromium did not print {} within {} s", html.display(), PRINT_TIMEOUT.as_secs());
    };
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut said);
    }
    let bytes =
        std::fs::read(pdf).with_context(|| format!("Chromium ({status}) wrote no {}: {said}", pdf.display()))?;
    ensure!(bytes.starts_with(b"%PDF-"), "{} is not a PDF", pdf.display());
    let pages = bytes
        .windows(b"/Type /Page\n".len())
        .filter(|w| w.starts_with(b"/Type /Page") && !w.starts_with(b"/Type /Pages"))
        .count();
    ensure!(pages >= 1, "{} has no page", pdf.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_to_guides_point_at_their_pages_and_others_stay() {
        let html = page(
            "# Guide\n\nSee [fr](edge_agent_install.fr.md#section), [web](https://example.com/a.md), \
             [src](../crates/x.md).\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
            "en",
            Path::new("/docs"),
        );
        assert!(html.contains("href=\"edge_agent_install.fr.html#section\""), "{html}");
        assert!(html.contains("href=\"https://example.com/a.md\""), "{html}");
        assert!(html.contains("href=\"../crates/x.md\""), "{html}");
        assert!(html.contains("<table>"), "{html}");
        assert!(html.contains("<title>Guide</title>"), "{html}");
        assert!(html.contains("<base href=\"file:///docs/\">"), "{html}");
    }

    #[test]
    fn a_title_with_markup_is_escaped() {
        let html = page("# A <b> & c\n", "fr", Path::new("/d"));
        assert!(html.contains("<html lang=\"fr\">"), "{html}");
        assert!(html.contains("<title>A &lt;b&gt; &amp; c</title>"), "{html}");
    }
}
