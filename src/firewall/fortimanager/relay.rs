//! FortiOS REST calls relayed to a managed FortiGate through FortiManager
//! (`exec /sys/proxy/json`), for sites where only the manager is reachable.
//!
//! The request names the device as `adom/<adom>/device/<device>`; the reply holds one answer
//! per device, `{target, status: {code, message}, response}`, where `response` is the
//! FortiGate's own reply envelope. A device that cannot be reached answers a non-zero code; a
//! FortiOS error comes back inside `response` with its `http_status`, which is mapped as a
//! direct call's HTTP status would be.

use serde_json::{json, Value};

use super::{access_error, escape, FortiManager, Outcome, NO_PERMISSION};
use crate::firewall::TargetError;

impl FortiManager {
    /// `GET resource` (a FortiOS path with its query) on `device`: the device's reply envelope.
    pub async fn relay_get(&mut self, device: &str, resource: &str) -> Result<Value, TargetError> {
        let target = format!(
            "adom/{}/device/{}",
            escape(&self.settings.adom),
            escape(device)
        );
        // FortiManager gives up on the device first, so its answer arrives before this
        // client's own timeout.
        let timeout = (self.settings.http.timeout.as_secs() / 2).max(1);
        let outcome = self
            .call_one(
                "exec",
                json!({
                    "url": "/sys/proxy/json",
                    "data": {
                        "action": "get",
                        "resource": resource,
                        "target": [target],
                        "timeout": timeout,
                    },
                }),
            )
            .await?;
        if !outcome.ok() {
            return Err(access_error(
                &format!("relaying to device {device}"),
                &outcome,
            ));
        }
        let answer = outcome.single();
        let code = answer["status"]["code"].as_i64().unwrap_or(0);
        let message = answer["status"]["message"].as_str().unwrap_or("no message");
        if code == NO_PERMISSION {
            let outcome = Outcome {
                code,
                message: message.to_owned(),
                data: Value::Null,
            };
            return Err(access_error(
                &format!("relaying to device {device}"),
                &outcome,
            ));
        }
        if code != 0 {
            return Err(TargetError::Unavailable(format!(
                "FortiManager could not reach device {device}: {message} (code {code})"
            )));
        }
        let response = answer
            .get("response")
            .cloned()
            .filter(Value::is_object)
            .ok_or_else(|| {
                TargetError::Protocol(format!("FortiManager relayed no reply from {device}"))
            })?;
        match response["http_status"].as_u64() {
            None | Some(200) => Ok(response),
            Some(status) => Err(relayed_error(device, status, &response)),
        }
    }
}

/// A FortiOS error relayed from `device`, as a direct call's status would be read.
fn relayed_error(device: &str, status: u64, response: &Value) -> TargetError {
    let detail = match response.get("error") {
        Some(error) => format!("device {device} answered HTTP {status} (error {error})"),
        None => format!("device {device} answered HTTP {status}"),
    };
    match status {
        401 => TargetError::Unauthorized {
            status: 401,
            detail,
        },
        403 => TargetError::Forbidden(detail),
        // The relay carries no Retry-After; the caller waits its own pause.
        429 => TargetError::Throttled { retry_after: None },
        500.. => TargetError::Unavailable(detail),
        _ => TargetError::Protocol(detail),
    }
}
