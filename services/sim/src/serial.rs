//! An Arduino-style sensor board on a serial port (one end of a pty pair in tests and demos):
//! it answers `READ_SENSORS` with a line such as `TEMP:21.5,HUM:40`, or streams that line on
//! its own, and takes `LED,{pin},{state}` commands, answering `OK` (`ERR` for anything it does
//! not understand). Temperature and humidity drift slowly so a reader sees changing values.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    task::JoinHandle,
    time::Instant,
};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// What the board shows, shared with whoever started it.
#[derive(Debug, Default, Clone)]
pub struct SerialBoard {
    inner: Arc<Mutex<BoardState>>,
}

#[derive(Debug, Default)]
struct BoardState {
    leds: BTreeMap<u8, bool>,
    commands: Vec<String>,
}

impl SerialBoard {
    /// The LED on `pin`, once a command set it.
    pub fn led(&self, pin: u8) -> Option<bool> {
        self.lock().leds.get(&pin).copied()
    }

    /// Every line the board received, in order.
    pub fn commands(&self) -> Vec<String> {
        self.lock().commands.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoardState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How the board behaves.
#[derive(Debug, Clone)]
pub struct SerialSimConfig {
    /// The serial port path (a pty end).
    pub port: PathBuf,
    /// Send the sensor line every this often on its own, instead of waiting to be asked.
    pub stream: Option<Duration>,
}

/// The sensor line at `t` seconds since start: slow drifts around 21.5 °C and 40 %.
pub fn sensor_line(t: f64) -> String {
    let temp = 21.5 + 0.5 * (t / 10.0).sin();
    let hum = 40.0 + 2.0 * (t / 25.0).sin();
    format!("TEMP:{temp:.1},HUM:{}", hum.round() as i64)
}

/// What the board answers to one received line, and the LED it sets.
pub fn answer(line: &str, t: f64) -> (String, Option<(u8, bool)>) {
    let line = line.trim();
    if line == "READ_SENSORS" {
        return (sensor_line(t), None);
    }
    let parts: Vec<&str> = line.split(',').collect();
    if let ["LED", pin, state] = parts.as_slice()
        && let Ok(pin) = pin.trim().parse::<u8>()
    {
        let on = match state.trim() {
            "1" | "ON" | "on" => Some(true),
            "0" | "OFF" | "off" => Some(false),
            _ => None,
        };
        if let Some(on) = on {
            return ("OK".into(), Some((pin, on)));
        }
    }
    ("ERR".into(), None)
}

/// Opens the port and runs the board until `stop`.
pub fn serve_serial(
    config: SerialSimConfig,
    stop: CancellationToken,
) -> Result<(SerialBoard, JoinHandle<()>)> {
    let port = open(&config.port)?;
    let board = SerialBoard::default();
    let shared = board.clone();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let (read, mut write) = tokio::io::split(port);
        let mut lines = BufReader::new(read).lines();
        let mut stream = config.stream.map(tokio::time::interval);
        loop {
            let t = started.elapsed().as_secs_f64();
            let out = tokio::select! {
                _ = stop.cancelled() => return,
                line = lines.next_line() => match line {
                    Ok(Some(line)) => {
                        let (reply, led) = answer(&line, t);
                        let mut state = shared.lock();
                        state.commands.push(line);
                        if let Some((pin, on)) = led {
                            state.leds.insert(pin, on);
                        }
                        reply
                    }
                    Ok(None) | Err(_) => return,
                },
                _ = tick(&mut stream) => sensor_line(t),
            };
            if write
                .write_all(format!("{out}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok((board, task))
}

async fn tick(stream: &mut Option<tokio::time::Interval>) {
    match stream {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn open(path: &Path) -> Result<tokio_serial::SerialStream> {
    tokio_serial::new(path.to_string_lossy(), 115_200)
        .open_native_async()
        .map_err(|source| Error::SerialPort {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_answers_reads_and_led_commands() {
        assert_eq!(answer("READ_SENSORS", 0.0).0, "TEMP:21.5,HUM:40");
        assert_eq!(answer("LED,13,1\r", 0.0), ("OK".into(), Some((13, true))));
        assert_eq!(answer("LED,13,0", 0.0), ("OK".into(), Some((13, false))));
        assert_eq!(answer("LED,x,1", 0.0).0, "ERR");
        assert_eq!(answer("LED,13,2", 0.0).0, "ERR");
        assert_ne!(sensor_line(0.0), sensor_line(15.0), "the values drift");
    }
}
