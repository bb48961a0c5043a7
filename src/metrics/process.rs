//! Process metrics under their conventional names (`process_resident_memory_bytes`,
//! `process_open_fds`, `process_cpu_seconds_total`, `process_start_time_seconds`, …), read
//! from `/proc` at scrape time, so dashboards built for any Prometheus client work as they
//! are. Elsewhere than Linux there is nothing to read and nothing is reported.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

/// One scrape's readings; a reading that failed is left out rather than reported as zero.
#[derive(Debug, Default)]
struct Readings {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

#[cfg(target_os = "linux")]
fn read() -> Readings {
    use procfs::process::{LimitValue, Process};
    use procfs::WithCurrentSystemInfo;
    let Ok(me) = Process::myself() else {
        return Readings::default();
    };
    let mut readings = Readings::default();
    if let Ok(stat) = me.stat() {
        let ticks = procfs::ticks_per_second() as f64;
        readings.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
        readings.resident_bytes = Some(stat.rss_bytes().get() as f64);
        readings.virtual_bytes = Some(stat.vsize as f64);
        if let Ok(boot) = procfs::boot_time_secs() {
            readings.start_time_seconds = Some(boot as f64 + stat.starttime as f64 / ticks);
        }
    }
    readings.open_fds = me.fd_count().ok().map(|n| n as f64);
    if let Ok(limits) = me.limits() {
        if let LimitValue::Value(max) = limits.max_open_files.soft_limit {
            readings.max_fds = Some(max as f64);
        }
    }
    readings
}

#[cfg(not(target_os = "linux"))]
fn read() -> Readings {
    Readings::default()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = read();
        if let Some(cpu) = r.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            let help = "Total user and system CPU time spent in seconds";
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                help,
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                r.virtual_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                r.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                r.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}
