//! The Kubernetes `Status` object that v4 and later remotecommand protocols write on the error stream, and
//! the plain message older ones write.

use serde_json::json;

use crate::backend::{BackendError, ExitStatus};

/// How a session ended, from the client's point of view.
pub enum Outcome {
    Success,
    ExitCode(i32),
    Error(String),
}

impl Outcome {
    pub fn of_exec(result: Result<ExitStatus, BackendError>) -> Outcome {
        match result {
            Ok(ExitStatus { code: 0 }) => Outcome::Success,
            Ok(ExitStatus { code }) => Outcome::ExitCode(code),
            Err(err) => Outcome::Error(err.to_string()),
        }
    }

    pub fn of_attach(result: Result<(), BackendError>) -> Outcome {
        match result {
            Ok(()) => Outcome::Success,
            Err(err) => Outcome::Error(err.to_string()),
        }
    }

    /// v4+: a `metav1.Status` as JSON (client-go reads the exit code from `details.causes`).
    pub fn status_json(&self) -> Vec<u8> {
        let value = match self {
            Outcome::Success => json!({"metadata": {}, "status": "Success"}),
            Outcome::ExitCode(code) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Error(message) => json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            }),
        };
        serde_json::to_vec(&value).expect("a json value serializes")
    }

    /// Before v4: nothing on success, else the message as text.
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::Success => None,
            Outcome::ExitCode(code) => Some(format!("command terminated with non-zero exit code: exit status {code}")),
            Outcome::Error(message) => Some(message.clone()),
        }
    }
}
