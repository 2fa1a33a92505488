//! A minimal QMP client: the greeting, capability negotiation, commands and their replies
//! (asynchronous events in between are skipped).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::VmmError;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the QMP socket at `path`, waiting up to `timeout` for QEMU to create it,
    /// and no longer once `alive` says QEMU has exited.
    pub fn connect(path: &Path, timeout: Duration, mut alive: impl FnMut() -> bool) -> Result<Self, VmmError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline && alive() => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(VmmError::io(format!("QMP socket {}", path.display()))(e)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(VmmError::io("QMP socket"))?;
        let writer = stream.try_clone().map_err(VmmError::io("QMP socket"))?;
        let mut qmp = Self { reader: BufReader::new(stream), writer };
        let greeting = qmp.message()?;
        if greeting.get("QMP").is_none() {
            return Err(VmmError::Protocol(format!("QEMU's QMP greeting was {greeting}")));
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn message(&mut self) -> Result<Value, VmmError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(VmmError::io("QMP socket"))? == 0 {
            return Err(VmmError::Protocol("QEMU closed the QMP socket".into()));
        }
        serde_json::from_str(&line).map_err(|e| VmmError::Protocol(format!("QMP sent {line:?}: {e}")))
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str) -> Result<Value, VmmError> {
        let request = json!({ "execute": command }).to_string() + "\n";
        self.writer.write_all(request.as_bytes()).map_err(VmmError::io("QMP socket"))?;
        loop {
            let reply = self.message()?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                return Err(VmmError::Protocol(format!("QMP {command}: {error}")));
            }
            // An event ({"event": …}); the reply follows.
        }
    }
}
