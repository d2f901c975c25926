//! Certificates for TLS tests, made with the host's openssl: a throwaway CA, a server certificate for
//! 127.0.0.1 and a client certificate signed by it.

use std::path::Path;
use std::process::Command;

use super::require_tool;

pub fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// EC P-256 keys without a passphrase, for every certificate here.
const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// Writes `ca.crt`/`ca.key` and `server.crt`/`server.key` (valid for IP 127.0.0.1, two days) into `dir`.
pub fn make_server_certificate(dir: &Path) {
    require_tool("openssl");
    run(Command::new("openssl").current_dir(dir).args(["req", "-x509"]).args(EC_KEY).args([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=berth test CA",
    ]));
    sign(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
}

/// Writes `client.crt`/`client.key` (a client certificate, two days) signed by the CA
/// [`make_server_certificate`] wrote into `dir`.
pub fn make_client_certificate(dir: &Path) {
    sign(
        dir,
        "client",
        "/CN=kubelet streaming proxy",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
}

/// A key and a certificate `<name>.key`/`<name>.crt` for `subject` with the `extensions`, signed by the CA in `dir`.
fn sign(dir: &Path, name: &str, subject: &str, extensions: &str) {
    let (key, csr, ext, crt) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"), format!("{name}.crt"));
    run(Command::new("openssl")
        .current_dir(dir)
        .arg("req")
        .args(EC_KEY)
        .args(["-keyout", &key, "-out", &csr, "-subj", subject]));
    std::fs::write(dir.join(&ext), extensions).unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        &crt,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]));
}
