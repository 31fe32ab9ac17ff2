//! Asking for a password on the terminal without echoing it.
//!
//! rpassword prints the prompt and only then turns the terminal's echo off, so whatever is
//! typed in between (a fast typist, a paste, a script answering the prompt) is echoed in
//! clear. As OpenSSH's `readpassphrase` does, echo goes off first here, and the prompt is
//! printed after.

/// Asks for a line on the terminal with echo off from before the prompt is shown.
pub fn ask_hidden(prompt: &str) -> std::io::Result<String> {
    let _quiet = EchoOff::new();
    rpassword::prompt_password(prompt)
}

/// The controlling terminal with its echo off until dropped, when its settings are put back.
#[cfg(unix)]
struct EchoOff {
    tty: std::fs::File,
    before: rustix::termios::Termios,
}

#[cfg(unix)]
impl EchoOff {
    /// `None` when there is no terminal to quieten (rpassword then reports that itself).
    fn new() -> Option<Self> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        let before = tcgetattr(&tty).ok()?;
        let mut quiet = before.clone();
        quiet
            .local_modes
            .remove(LocalModes::ECHO | LocalModes::ECHONL);
        tcsetattr(&tty, OptionalActions::Now, &quiet).ok()?;
        Some(Self { tty, before })
    }
}

#[cfg(unix)]
impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            &self.tty,
            rustix::termios::OptionalActions::Now,
            &self.before,
        );
    }
}

/// Elsewhere rpassword's own handling is all there is.
#[cfg(not(unix))]
struct EchoOff;

#[cfg(not(unix))]
impl EchoOff {
    fn new() -> Option<Self> {
        None
    }
}
