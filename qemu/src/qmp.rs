//! A minimal QMP client: just enough to ask for an ACPI power-down.
//!
//! QMP is line-delimited JSON over a Unix socket: a greeting, `qmp_capabilities`, then commands.
//! Events may arrive between a command and its answer; they are skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::LaunchError;

/// Sends one QMP command (with `arguments`, or `Value::Null` for none) and returns its `return`
/// value.
pub fn execute(socket: &Path, command: &str, arguments: Value) -> Result<Value, LaunchError> {
    let err = |reason: String| LaunchError::Qmp {
        socket: socket.display().to_string(),
        reason,
    };
    let stream = UnixStream::connect(socket).map_err(|e| err(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| err(e.to_string()))?;
    let mut writer = stream.try_clone().map_err(|e| err(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    read_answer(&mut reader, true).map_err(err)?;
    for (cmd, args) in [("qmp_capabilities", Value::Null), (command, arguments)] {
        let mut request = json!({ "execute": cmd });
        if !args.is_null() {
            request["arguments"] = args;
        }
        let line = request.to_string() + "\n";
        writer
            .write_all(line.as_bytes())
            .map_err(|e| err(format!("send {cmd}: {e}")))?;
        let answer = read_answer(&mut reader, false).map_err(|e| err(format!("{cmd}: {e}")))?;
        if cmd == command {
            return Ok(answer);
        }
    }
    Err(err("no answer".into()))
}

fn read_answer(reader: &mut impl BufRead, greeting: bool) -> Result<Value, String> {
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        let value: Value = serde_json::from_str(&line).map_err(|e| format!("bad JSON: {e}"))?;
        if greeting && value.get("QMP").is_some() {
            return Ok(value);
        }
        if let Some(ret) = value.get("return") {
            return Ok(ret.clone());
        }
        if let Some(error) = value.get("error") {
            return Err(error.to_string());
        }
        // An event: keep reading.
    }
}
