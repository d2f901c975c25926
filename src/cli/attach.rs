//! `berth attach [-i] [-t] CONTAINER`: connects to a running container's own stdio through the streaming
//! server (the Attach RPC returns the URL), like `crictl attach`. Whether the container has a terminal is
//! read from its status when `-t` is not given: an attach must ask for exactly the streams the container
//! has (a tty container has no stderr).

use super::client::{Client, rpc_failed};
use super::stream::{self, TransportArg};
use crate::cri::v1::{AttachRequest, ContainerStatusRequest};

/// `berth attach`.
#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Send stdin to the container.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Whether the container has a terminal (default: as its status says).
    #[arg(long, short = 't', num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tty: Option<bool>,
    /// The streaming protocol.
    #[arg(long, value_enum, default_value_t = TransportArg::Spdy)]
    pub transport: TransportArg,
    pub container: String,
}

/// Attaches until the container's output ends or the session is closed; the exit code is 0 unless the
/// session failed.
pub async fn run(mut client: Client, args: AttachArgs) -> Result<u8, String> {
    let tty = match args.tty {
        Some(tty) => tty,
        None => container_has_tty(&mut client, &args.container).await?,
    };
    let request =
        AttachRequest { container_id: args.container, stdin: args.interactive, tty, stdout: true, stderr: !tty };
    let url = client.runtime.attach(request).await.map_err(|s| rpc_failed("Attach", s))?.into_inner().url;
    stream::run_command(&url, args.transport, args.interactive, tty).await
}

/// The container's `process.terminal`, from the runtime spec in its verbose status.
async fn container_has_tty(client: &mut Client, container_id: &str) -> Result<bool, String> {
    let request = ContainerStatusRequest { container_id: container_id.to_owned(), verbose: true };
    let answer = client.runtime.container_status(request).await.map_err(|s| rpc_failed("ContainerStatus", s))?;
    Ok(tty_of_info(answer.get_ref().info.get("info").map(String::as_str)))
}

/// `runtimeSpec.process.terminal` of a verbose status's `info` JSON (berth and containerd both put the
/// spec there); false when absent.
fn tty_of_info(info: Option<&str>) -> bool {
    info.and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|info| info["runtimeSpec"]["process"]["terminal"].as_bool())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        attach: super::AttachArgs,
    }

    #[test]
    fn tty_is_taken_from_the_flag_or_left_to_the_status() {
        assert_eq!(Harness::parse_from(["attach", "abc"]).attach.tty, None);
        assert_eq!(Harness::parse_from(["attach", "-t", "abc"]).attach.tty, Some(true));
        assert_eq!(Harness::parse_from(["attach", "--tty=false", "abc"]).attach.tty, Some(false));
        let parsed = Harness::parse_from(["attach", "-i", "abc"]).attach;
        assert!(parsed.interactive);
        assert_eq!(parsed.container, "abc");
    }

    #[test]
    fn the_status_says_whether_there_is_a_terminal() {
        assert!(super::tty_of_info(Some(r#"{"runtimeSpec":{"process":{"terminal":true}}}"#)));
        assert!(!super::tty_of_info(Some(r#"{"runtimeSpec":{"process":{"args":["sh"]}}}"#)));
        assert!(!super::tty_of_info(Some("not json")));
        assert!(!super::tty_of_info(None));
    }
}
