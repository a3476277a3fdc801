package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// userHZ is the unit of /proc/stat and /proc/PID/stat times: USER_HZ, 100
// on every Linux architecture (the kernel converts to it for userspace,
// whatever CONFIG_HZ is).
const userHZ = 100

// machineBusy is the CPU time, in seconds, all CPUs together have spent
// busy since boot: every /proc/stat "cpu" field but idle and iowait
// (user, nice, system, irq, softirq, steal; guest time is already in
// user).
func machineBusy() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy uint64
	for i, name := range []string{"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"} {
		v, err := strconv.ParseUint(f[1+i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat %s: %w", name, err)
		}
		if name != "idle" && name != "iowait" {
			busy += v
		}
	}
	return float64(busy) / userHZ, nil
}

// processCPU is the CPU time, in seconds, process pid has used (utime +
// stime, all its threads).
func processCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after its closing parenthesis, where field 3 starts.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	const utime, stime = 14 - 3, 15 - 3
	if len(f) <= stime {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	u, err1 := strconv.ParseUint(f[utime], 10, 64)
	s, err2 := strconv.ParseUint(f[stime], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[utime], f[stime])
	}
	return float64(u+s) / userHZ, nil
}

// tcpCounter reads one counter of the "Tcp:" lines of /proc/PID/net/snmp:
// the counters of the network namespace pid lives in.
func tcpCounter(pid int, name string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/snmp", pid))
	if err != nil {
		return 0, err
	}
	var head []string
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Tcp: ")
		if !ok {
			continue
		}
		if head == nil {
			head = strings.Fields(rest)
			continue
		}
		vals := strings.Fields(rest)
		for i, h := range head {
			if h == name && i < len(vals) {
				return strconv.ParseInt(vals[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/net/snmp: no Tcp %s", pid, name)
}
