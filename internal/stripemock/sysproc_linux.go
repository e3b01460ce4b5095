package stripemock

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts stripe-mock in its own process group (a Ctrl-C in the
// terminal reaches the Go program, which closes it in order) and has the
// kernel kill it when the thread that started it dies, so that a test binary
// that exits without Close (os.Exit, a panic, SIGKILL) leaves no process
// behind. The Go runtime retires an OS thread only when a goroutine locked to
// it exits, which no caller here does.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
