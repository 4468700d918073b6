//! systemd service and timer units for the configuration's scheduled
//! jobs (`tapir systemd generate`).

use std::path::Path;

use super::Config;

/// One unit file: its name and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub text: String,
}

/// A service and a timer for every job with a `schedule`. `tapir` is the
/// binary the service runs.
pub fn units(cfg: &Config, tapir: &Path) -> Vec<Unit> {
    let mut out = Vec::new();
    for job in cfg.jobs.values() {
        let Some(schedule) = &job.schedule else {
            continue;
        };
        let base = format!("tapir-{}", job.name);
        out.push(Unit {
            name: format!("{base}.service"),
            text: format!(
                "[Unit]\n\
                 Description=tapir job {name}\n\
                 Documentation=man:tapir(1)\n\
                 After=local-fs.target\n\
                 \n\
                 [Service]\n\
                 Type=oneshot\n\
                 ExecStart={tapir} --config {config} run {name}\n\
                 # Tape jobs run for hours: no start timeout cuts one short.\n\
                 TimeoutStartSec=infinity\n\
                 # Exit 1 is a job done with warnings, which the journal shows.\n\
                 SuccessExitStatus=1\n\
                 SyslogIdentifier={base}\n\
                 IOSchedulingClass=best-effort\n",
                name = job.name,
                tapir = tapir.display(),
                config = cfg.path.display(),
            ),
        });
        out.push(Unit {
            name: format!("{base}.timer"),
            text: format!(
                "[Unit]\n\
                 Description=tapir job {name}, on schedule\n\
                 \n\
                 [Timer]\n\
                 OnCalendar={schedule}\n\
                 # A night missed while the machine was off runs at the next boot.\n\
                 Persistent=true\n\
                 \n\
                 [Install]\n\
                 WantedBy=timers.target\n",
                name = job.name,
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_job_gets_a_service_and_a_timer() {
        let cfg = Config::parse(
            Path::new("/etc/tapir/tapir.toml"),
            "[pool.p]\nretention = \"7d\"\n[job.nightly]\nsources = [\"/etc\"]\npool = \"p\"\nschedule = \"Mon..Fri 01:00\"\n[job.manual]\nsources = [\"/srv\"]\npool = \"p\"\n",
        )
        .unwrap();
        let u = units(&cfg, Path::new("/usr/bin/tapir"));
        let names: Vec<&str> = u.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["tapir-nightly.service", "tapir-nightly.timer"]);
        assert!(u[0]
            .text
            .contains("ExecStart=/usr/bin/tapir --config /etc/tapir/tapir.toml run nightly\n"));
        assert!(u[1].text.contains("OnCalendar=Mon..Fri 01:00\n"));
    }
}
