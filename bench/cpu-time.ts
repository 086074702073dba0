/**
 * CPU time from Linux /proc, for the benchmarks' "where does the CPU go" tables: per process, and
 * for the whole machine (which shows how much other work shared the cores). Undefined elsewhere.
 */
import { readFileSync } from 'node:fs';

/** USER_HZ: 100 on every Linux build Node supports. */
const CLOCK_TICKS_PER_SECOND = 100;

/** CPU time (user + system) process `pid` has used so far, in milliseconds. */
export function processCpuMs(pid: number | 'self'): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ticksToMs(Number(fields[11]) + Number(fields[12]));
  } catch {
    return undefined;
  }
}

/** CPU time all cores of the machine have spent busy so far (everything but idle and iowait), in milliseconds. */
export function machineBusyCpuMs(): number | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
    // cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest time is inside user)
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
    return ticksToMs(user + nice + system + irq + softirq + steal);
  } catch {
    return undefined;
  }
}

function ticksToMs(ticks: number): number {
  return (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
}
