//! What `/proc` says about a process: CPU time (utime + stime, all threads),
//! peak resident memory (VmHWM), and which process runs with a given file;
//! and the whole machine's busy time, to tell how much other work ran.

use std::path::Path;
use std::process::Command;

/// CPU time of a process so far, in clock ticks (utime + stime of
/// `/proc/PID/stat`, summed over its threads).
pub fn cpu_ticks(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| std::io::Error::other(format!("bad /proc/{pid}/stat")))
}

/// CPU time so far of this process's threads named `name`, in clock
/// ticks (`/proc/self/task/TID/stat` of each thread whose `comm` is
/// `name`). Threads that already ended no longer count.
pub fn own_threads_ticks(name: &str) -> std::io::Result<u64> {
    let mut sum = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let dir = entry?.path();
        // A thread may end between the listing and the reads.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        if let Some(ticks) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| parse_cpu_ticks(&stat))
        {
            sum += ticks;
        }
    }
    Ok(sum)
}

/// Peak resident set size (VmHWM of `/proc/PID/status`) in KiB.
pub fn peak_rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_hwm(&status).ok_or_else(|| std::io::Error::other(format!("no VmHWM for {pid}")))
}

/// CPU time spent by all processes of the machine so far, in clock ticks
/// (the `cpu` line of `/proc/stat`, idle and iowait excluded).
pub fn machine_busy_ticks() -> std::io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_machine_busy(&stat).ok_or_else(|| std::io::Error::other("bad /proc/stat"))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails, the
/// value on every Linux of this kind).
pub fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The process whose command line has an argument equal to `arg`, such as
/// the unique configuration file of a server the testbed started.
pub fn find_pid_by_arg(arg: &Path) -> Option<u32> {
    let arg = arg.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|a| a == arg))
        })
}

/// utime + stime from the text of `/proc/PID/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after
/// its last `)`: state is field 3, utime 14, stime 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Busy ticks from the `cpu` line of `/proc/stat`: user nice system idle
/// iowait irq softirq steal (guest time is already counted in user).
fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = fields.try_into().ok()?;
    Some(user + nice + system + irq + softirq + steal)
}

/// VmHWM in KiB from the text of `/proc/PID/status`.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime() {
        let stat = "4242 (lua5.4 (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 31 0 0 20 0 1 0 123 456 789";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_machine_busy_time() {
        let stat = "cpu  100 2 30 5000 7 1 4 0 0 0\ncpu0 50 1 15 2500 3 0 2 0 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(137));
        assert_eq!(parse_machine_busy("cpu0 1 2 3\n"), None);
    }

    #[test]
    fn reads_vm_hwm() {
        let status =
            "Name:\tprosody\nVmPeak:\t  300000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   50000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(51234));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(machine_busy_ticks().is_ok());
        assert!(peak_rss_kib(me).unwrap() > 0);
        assert!(ticks_per_second() > 0);
    }

    #[test]
    fn reads_named_threads() {
        let busy = std::thread::Builder::new()
            .name("procfs-test".into())
            .spawn(|| {
                // Works until its own CPU time shows (a tick is 10 ms).
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_secs(10) {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                    if own_threads_ticks("procfs-test").unwrap() > 0 {
                        return true;
                    }
                }
                false
            })
            .unwrap();
        assert!(busy.join().unwrap(), "the thread's CPU time shows");
        assert_eq!(own_threads_ticks("no-such-thread").unwrap(), 0);
    }
}
