//go:build !linux

package stripemock

import "os/exec"

// setProcAttr leaves the defaults: only Linux can tie the child's life to
// ours (Pdeathsig); elsewhere Close is what stops stripe-mock.
func setProcAttr(cmd *exec.Cmd) {}
