//! The trust roots of the agent's HTTP clients (controller, artifact store, other
//! agents): plain HTTP needs none, HTTPS uses the CA a setting names, or the system's.

use std::path::Path;

/// `builder` with the trust roots for a URL of `scheme`: none for `http` (loopback
/// only, checked with the config), the certificates of `ca_file` when set (`setting`
/// names it in errors, e.g. "[controller] ca_file"), else the system's.
pub fn trusting(
    builder: reqwest::ClientBuilder,
    scheme: &str,
    ca_file: Option<&Path>,
    setting: &str,
) -> Result<reqwest::ClientBuilder, String> {
    if scheme == "http" {
        // Do not depend on the system's roots, which a minimal host may not have.
        return Ok(builder.tls_certs_only(Vec::new()));
    }
    let Some(ca_file) = ca_file else {
        return Ok(builder);
    };
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read {setting} {}: {e}", ca_file.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .ok()
        .filter(|certs| !certs.is_empty())
        .ok_or_else(|| format!("{setting} {} holds no valid PEM certificate", ca_file.display()))?;
    Ok(builder.tls_certs_only(certs))
}
