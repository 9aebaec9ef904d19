package executor

import (
	"bytes"
	"os"
	"strconv"
	"time"
)

// TaskEnvVar names, in every local action's environment, the task it
// belongs to (the runner sets it). It is how the agent finds an action's
// processes once the plugin that started them is gone.
const TaskEnvVar = "OPSCONDUCTOR_TASK_ID"

// KillTaskProcesses SIGKILLs every process of this host whose environment
// says it belongs to task, until none is left (they may still be forking)
// or a few seconds pass, and returns how many it killed. It is the
// cleanup after a shell plugin died mid-action: its action's process group
// has no one left to stop it.
func KillTaskProcesses(task string) int {
	if task == "" {
		return 0
	}
	marker := []byte(TaskEnvVar + "=" + task)
	self := os.Getpid()
	killed := 0
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		entries, err := os.ReadDir("/proc")
		if err != nil {
			return killed
		}
		found := 0
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == self {
				continue
			}
			env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
			if err != nil {
				continue
			}
			for _, kv := range bytes.Split(env, []byte{0}) {
				if bytes.Equal(kv, marker) {
					if killPID(pid) == nil {
						found++
					}
					break
				}
			}
		}
		killed += found
		if found == 0 {
			return killed
		}
		time.Sleep(20 * time.Millisecond)
	}
	return killed
}
