use std::fmt::Display;

/// What a callback (an event handler, a reload function) may return: `()`
/// or `Result<(), E>` with `E: Display`. An `Err` is logged by the caller.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid callback return type",
    label = "return `()` or `Result<(), E>` where `E: Display`"
)]
pub trait HandlerOutcome {
    /// Turns the value into `Ok(())` or the error's text.
    fn into_outcome(self) -> Result<(), String>;
}

impl HandlerOutcome for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> HandlerOutcome for Result<(), E> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}
