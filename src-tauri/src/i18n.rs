//! The tray's own words (menu, tooltip, notifications) in English and French, and the
//! language they are shown in.
//!
//! It owns the Rust-side catalogue and the process-wide current language. The window has its
//! own catalogue (ui/src/i18n); both follow the same choice, which `preferences` keeps. It
//! must never hold a word for the person outside [`catalogue!`]: a key without its French
//! does not compile.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU8, Ordering};

/// The languages the app speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    En,
    Fr,
}

impl Lang {
    /// The language for a locale tag (`fr`, `fr-FR`, `fr_CA.UTF-8`, `en-US`); English for
    /// anything that is not French, since it is the other language the app speaks.
    pub fn from_locale(tag: &str) -> Lang {
        let language = tag.trim().split(['-', '_', '.', '@']).next().unwrap_or("");
        if language.eq_ignore_ascii_case("fr") {
            Lang::Fr
        } else {
            Lang::En
        }
    }

    /// The system's language (on Linux `LC_ALL`, `LC_MESSAGES`, then `LANG`, through
    /// sys-locale).
    pub fn system() -> Lang {
        sys_locale::get_locale().map_or(Lang::En, |tag| Lang::from_locale(&tag))
    }

    pub fn texts(self) -> &'static Texts {
        match self {
            Lang::En => &EN,
            Lang::Fr => &FR,
        }
    }
}

static CURRENT: AtomicU8 = AtomicU8::new(0);

/// The language the tray speaks now.
pub fn current() -> Lang {
    if CURRENT.load(Ordering::Relaxed) == 1 {
        Lang::Fr
    } else {
        Lang::En
    }
}

pub fn set_current(lang: Lang) {
    CURRENT.store(if lang == Lang::Fr { 1 } else { 0 }, Ordering::Relaxed);
}

/// The current language's texts.
pub fn t() -> &'static Texts {
    current().texts()
}

/// `template` with each `{name}` replaced by its value.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// One struct of texts, and its English and French values: each key takes both, so a key
/// without its French is a compile error, not a blank menu item.
macro_rules! catalogue {
    ($($key:ident: $en:literal, $fr:literal;)*) => {
        pub struct Texts {
            $(pub $key: &'static str,)*
        }
        pub const EN: Texts = Texts { $($key: $en,)* };
        pub const FR: Texts = Texts { $($key: $fr,)* };
        #[cfg(test)]
        impl Texts {
            /// Every key with its text.
            pub fn entries(&self) -> Vec<(&'static str, &'static str)> {
                vec![$((stringify!($key), self.$key),)*]
            }
        }
    };
}

catalogue! {
    // Tray menu.
    menu_open: "Open Edge Agent", "Ouvrir Edge Agent";
    menu_pause: "Pause jobs", "Mettre en pause";
    menu_resume: "Resume jobs", "Reprendre";
    menu_quit: "Quit", "Quitter";

    // Tray tooltip: "Edge Agent — {state}".
    tooltip: "Edge Agent — {state}", "Edge Agent — {state}";
    tip_signed_out: "not signed in", "non connecté";
    tip_connecting: "connecting…", "connexion…";
    tip_offline: "offline", "hors ligne";
    tip_online: "connected, waiting for tasks", "connecté, en attente de tâches";
    tip_busy: "running a task", "tâche en cours";
    tip_paused: "paused, no new tasks", "en pause, aucune nouvelle tâche";
    tip_quiet: "quiet hours until {time}", "heures calmes jusqu'à {time}";
    tip_error: "error: {error}", "erreur : {error}";

    // Notifications.
    job_started: "Task started", "Tâche démarrée";
    job_finished: "Task finished", "Tâche terminée";
    job_failed: "Task failed", "Échec de la tâche";
    // `{kind}` is one of the kind_* words, `{id}` the job's short id.
    job_body: "{kind} ({id})", "{kind} ({id})";
    job_failed_body: "{kind} ({id}): {message}", "{kind} ({id}) : {message}";
    kind_http_request: "Web request", "Requête web";
    kind_bundle: "Signed script", "Script signé";
    kind_send_dm: "Message", "Message";
    kind_broadcast_dm: "Message to several fans", "Message à plusieurs fans";
    kind_schedule_post: "Scheduled post", "Publication programmée";
    kind_scrape_subs: "Subscriber list", "Liste des abonnés";
    kind_other: "Task {type}", "Tâche {type}";
    login_required: "Edge Agent needs you to sign in again", "Edge Agent a besoin que vous vous reconnectiez";
    browser_paused: "Browser tasks paused", "Tâches du navigateur en pause";
    browser_paused_body:
        "{site} kept refusing ({reason}); browser tasks wait for a cool-down, then resume by themselves.",
        "{site} refusait sans cesse ({reason}) ; les tâches du navigateur attendent un moment, puis reprennent d'elles-mêmes.";
    browser_resumed: "Browser tasks resumed", "Tâches du navigateur reprises";
    browser_resumed_body: "The cool-down is over.", "La pause est terminée.";
    site_login: "Log in to {site}", "Connectez-vous à {site}";
    site_login_body:
        "{site} shows its logged-out page. Open Edge Agent and choose “Log in to {site}”, then retry.",
        "{site} affiche sa page de connexion. Ouvrez Edge Agent et choisissez « Se connecter à {site} », puis relancez.";
    volatile: "Site logins will not be kept", "Les connexions aux sites ne seront pas gardées";
    volatile_body:
        "No keychain key for browser sessions ({reason}); site logins last until the app stops.",
        "Pas de clé dans le trousseau pour les sessions du navigateur ({reason}) ; les connexions aux sites durent jusqu'à l'arrêt de l'application.";
    startup_error: "Edge Agent cannot read its sign-in", "Edge Agent ne peut pas lire sa connexion";

    // Updates.
    update_ready: "Update ready", "Mise à jour prête";
    update_ready_body:
        "Edge Agent {version} is installed. Restart now or tonight from the window.",
        "Edge Agent {version} est installé. Redémarrez maintenant ou cette nuit depuis la fenêtre.";
    update_available: "Update available", "Mise à jour disponible";
    update_available_body:
        "Edge Agent {version} is out. Update it the way you installed it (your package manager or the installer).",
        "Edge Agent {version} est sorti. Mettez-le à jour comme vous l'avez installé (gestionnaire de paquets ou installateur).";
    updates_unreachable: "Updates unreachable", "Mises à jour injoignables";
    updates_unreachable_body:
        "Edge Agent has not been able to check for updates for {days} days. Check your connection, or ask your hub's operator.",
        "Edge Agent n'a pas pu vérifier ses mises à jour depuis {days} jours. Vérifiez votre connexion, ou contactez l'opérateur de votre hub.";

    // Jobs screen (issue 20): pause lengths, a job in words, grouped notifications.
    menu_pause_hour: "Pause for 1 hour", "Mettre en pause 1 heure";
    menu_pause_tomorrow: "Pause until tomorrow 8:00", "Mettre en pause jusqu'à demain 8 h";
    tip_paused_until: "paused until {time}, no new tasks", "en pause jusqu'à {time}, aucune nouvelle tâche";
    // A job in words, from the core's neutral summary; `{site}` is the adapter's name.
    words_dm_running: "Sending a message to {recipient} on {site}", "Envoi d'un message à {recipient} sur {site}";
    words_dm_done: "Sent a message to {recipient} on {site}", "Message envoyé à {recipient} sur {site}";
    words_broadcast: "Broadcast to {total} fans on {site}", "Envoi à {total} fans sur {site}";
    words_broadcast_progress:
        "Broadcast to {total} fans on {site}: {done}/{total} sent",
        "Envoi à {total} fans sur {site} : {done}/{total} envoyés";
    words_post: "Scheduled post on {site}", "Publication programmée sur {site}";
    words_scrape: "Subscriber list of {site}", "Liste des abonnés de {site}";
    job_progress: "Task in progress", "Tâche en cours";
    // One notification for the tasks that ended without their own.
    summary_title: "Tasks", "Tâches";
    summary_finished_one: "1 task finished", "1 tâche terminée";
    summary_finished_many: "{count} tasks finished", "{count} tâches terminées";
    summary_failed_one: "1 failed", "1 en échec";
    summary_failed_many: "{count} failed", "{count} en échec";
    summary_failed_only_one: "1 task failed", "1 tâche en échec";
    summary_failed_only_many: "{count} tasks failed", "{count} tâches en échec";
    summary_both: "{finished}, {failed}", "{finished}, {failed}";
    // The action a click on a notification takes.
    notification_open: "Open", "Ouvrir";

    // Several accounts.
    // A job's or a need's notification when the app holds several accounts.
    note_account: "{title} — {account}", "{title} — {account}";
    menu_accounts: "Accounts", "Comptes";
    menu_add_account: "Add an account…", "Ajouter un compte…";
    menu_pause_all: "Pause all accounts", "Mettre tous les comptes en pause";
    menu_resume_all: "Resume all accounts", "Reprendre tous les comptes";
    account_signed_out: "New account (not signed in)", "Nouveau compte (non connecté)";
    account_paused: "{account} (paused)", "{account} (en pause)";

    // The hub's signing keys (issue 20, sign-in): 30 days before they expire, and once expired.
    // `{keys}` is one of the expiry_keys_* words, `{date}` the local day, `{effect}` an
    // expiry_effect_* sentence.
    expiry_soon: "Your hub's signing keys expire soon", "Les clés de signature de votre hub expirent bientôt";
    expiry_soon_body:
        "{keys} expire on {date}. Ask whoever runs your hub to renew its signing keys; Edge Agent picks up the new ones by itself, with nothing to reinstall.",
        "{keys} expirent le {date}. Demandez à la personne qui gère votre hub de renouveler ses clés de signature ; Edge Agent prendra les nouvelles de lui-même, sans rien réinstaller.";
    expiry_expired: "Your hub's signing keys have expired", "Les clés de signature de votre hub ont expiré";
    expiry_expired_body:
        "{keys} expired on {date}: {effect} Ask whoever runs your hub to renew its signing keys; Edge Agent picks up the new ones by itself at its next check, with nothing to reinstall.",
        "{keys} ont expiré le {date} : {effect} Demandez à la personne qui gère votre hub de renouveler ses clés de signature ; Edge Agent prendra les nouvelles de lui-même à sa prochaine vérification, sans rien réinstaller.";
    expiry_keys_bundles: "The keys of signed scripts", "Les clés des scripts signés";
    expiry_keys_updates: "The keys of updates", "Les clés des mises à jour";
    expiry_effect_bundles:
        "signed scripts are refused until the keys are renewed.",
        "les scripts signés sont refusés jusqu'au renouvellement des clés.";
    expiry_effect_updates:
        "updates are refused until the keys are renewed.",
        "les mises à jour sont refusées jusqu'au renouvellement des clés.";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn placeholders(text: &str) -> BTreeSet<String> {
        text.split('{').skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned())).collect()
    }

    #[test]
    fn every_key_has_both_languages_with_the_same_placeholders() {
        let (en, fr) = (EN.entries(), FR.entries());
        assert_eq!(en.len(), fr.len());
        for ((key, english), (fr_key, french)) in en.iter().zip(&fr) {
            assert_eq!(key, fr_key);
            assert!(!english.trim().is_empty() && !french.trim().is_empty(), "{key} is empty");
            assert_eq!(placeholders(english), placeholders(french), "{key}: placeholders differ");
        }
        // Translated, not copied: only words that are the same in both languages may match.
        let same: Vec<_> = en.iter().zip(&fr).filter(|((_, e), (_, f))| e == f).map(|((key, _), _)| *key).collect();
        assert_eq!(
            same,
            ["tooltip", "job_body", "kind_send_dm", "summary_both", "note_account"],
            "English left in the French catalogue"
        );
    }

    #[test]
    fn french_typography_puts_a_space_before_colons() {
        for (key, french) in FR.entries() {
            for (i, _) in french.match_indices(':') {
                assert!(french[..i].ends_with(' '), "{key}: {french:?} needs a space before ':'");
            }
        }
    }

    #[test]
    fn the_locale_picks_french_or_else_english() {
        for tag in ["fr", "fr-FR", "fr_FR.UTF-8", "FR_be", "fr_CA@euro"] {
            assert_eq!(Lang::from_locale(tag), Lang::Fr, "{tag}");
        }
        for tag in ["en-US", "C", "", "de_DE.UTF-8", "fra", "POSIX"] {
            assert_eq!(Lang::from_locale(tag), Lang::En, "{tag}");
        }
    }

    #[test]
    fn fill_replaces_every_placeholder() {
        assert_eq!(fill(FR.site_login, &[("site", "FanDeck")]), "Connectez-vous à FanDeck");
        assert_eq!(fill(EN.tip_quiet, &[("time", "07:00")]), "quiet hours until 07:00");
    }
}
