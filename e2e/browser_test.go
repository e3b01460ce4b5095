package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// The browser tests drive a real headless Chromium with chromedp. CI
// installs the Debian chromium package (.ci/ensure-deps.sh); without it the
// tests fail, and skip only with -short. FLEETPLANE_CHROMIUM names another
// binary; FLEETPLANE_ARTIFACTS a directory for what a failed test leaves
// (a full-page screenshot, the page's HTML and URL, the console, the
// server's and Chromium's logs; default: a new directory under
// os.TempDir(), printed in the test log).

const (
	// stepTimeout bounds one browser action (a click, a page load, a
	// wait for an element): generous, the machine is small and shared.
	stepTimeout = 45 * time.Second
	// browserWidth, browserHeight is the window (a laptop).
	browserWidth, browserHeight = 1280, 900
)

// chromiumPath finds the Chromium binary.
func chromiumPath() (string, error) {
	if p := os.Getenv("FLEETPLANE_CHROMIUM"); p != "" {
		return exec.LookPath(p)
	}
	for _, name := range []string{"chromium", "chromium-browser", "/usr/bin/chromium", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no chromium, chromium-browser or google-chrome on PATH")
}

// browser is one tab of a headless Chromium.
type browser struct {
	t    *testing.T
	ctx  context.Context // the tab; no deadline: each action derives its own
	base string          // the site's URL, without a trailing slash

	// serverLog, when set, is saved with the artifacts of a failed test.
	serverLog func() []byte
	chromeLog *lockedBuffer

	mu       sync.Mutex
	step     string
	started  time.Time
	stepAt   time.Time
	console  []string // what the page wrote to its console, in order
	problems []string // what consoleProblem flags
	dialogs  []string // the messages of the confirm/alert dialogs accepted
	shots    int
}

// needChromium returns the Chromium binary. Without one the test fails
// (CI must run it), but for -short, where it skips.
func needChromium(t *testing.T) string {
	t.Helper()
	bin, err := chromiumPath()
	if err != nil {
		if testing.Short() {
			t.Skipf("browser test skipped with -short: %v", err)
		}
		t.Fatalf("the browser tests need Chromium: %v; run .ci/ensure-deps.sh (it installs the Debian chromium package) or set FLEETPLANE_CHROMIUM", err)
	}
	return bin
}

// newBrowser starts Chromium bin headless (a fresh profile, no network
// beyond what the pages load) and opens a tab on base. On failure the
// test's cleanup saves the page's screenshot and HTML first.
func newBrowser(t *testing.T, bin, base string) *browser {
	t.Helper()
	profile, err := os.MkdirTemp("", "fleetplane-chromium-*")
	if err != nil {
		t.Fatal(err)
	}
	// Chromium's output and chromedp's messages: saved with the artifacts
	// (t.Logf could run after the test ended).
	chromeLog := &lockedBuffer{}
	logf := func(format string, args ...any) { fmt.Fprintf(chromeLog, format+"\n", args...) }
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(profile),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.WindowSize(browserWidth, browserHeight),
		// A closed network: no connections to Google's services.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.CombinedOutput(chromeLog),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(logf), chromedp.WithErrorf(logf))
	b := &browser{t: t, ctx: ctx, base: strings.TrimSuffix(base, "/"), started: time.Now(), chromeLog: chromeLog}
	b.stepAt = b.started
	t.Cleanup(func() {
		cancel()
		acancel()
		_ = os.RemoveAll(profile)
	})
	// The first action starts the browser; its context must not carry a
	// deadline (that would end the browser with it), so bound it from here.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err = <-started:
	case <-time.After(2 * stepTimeout):
		err = errors.New("timed out")
	}
	if err != nil {
		t.Fatalf("starting Chromium %s: %v\n%s", bin, err, chromeLog.Bytes())
	}
	// The tab counts as focused, as a user's would (the clipboard API
	// of the copy buttons needs it).
	fctx, fcancel := context.WithTimeout(ctx, stepTimeout)
	_, err = chromedp.Call(fctx, emulation.SetFocusEmulationEnabled, emulation.SetFocusEmulationEnabledParams{Enabled: true})
	fcancel()
	if err != nil {
		t.Fatalf("focus emulation: %v", err)
	}

	// What the page says on its console. Problems fail the test.
	console := chromedp.Console(ctx)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			line := fmt.Sprintf("%s %s:%d %s", m.Type, m.URL, m.Line+1, m)
			b.mu.Lock()
			b.console = append(b.console, line)
			if consoleProblem(m) {
				b.problems = append(b.problems, line)
			}
			b.mu.Unlock()
		}
	}()
	// Confirmation dialogs (data-confirm forms) are accepted and recorded.
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.dialogs = append(b.dialogs, ev.Message)
			b.mu.Unlock()
			if _, err := chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true}); err != nil && ctx.Err() == nil {
				t.Errorf("accepting the dialog %q: %v", ev.Message, err)
			}
		}
	}()
	// Registered after the browser's cleanup, so it runs first, while the
	// tab is still open.
	t.Cleanup(b.finish)
	return b
}

// consoleProblem reports whether a console message shows a bug of the
// pages: an uncaught exception, a Content-Security-Policy violation (the
// portal forbids inline script and style), a static asset that failed to
// load, or any other error the page itself caused (such as an invalid
// pattern attribute). Failed loads of other resources are not (the
// favicon's 404; a 504 page of a command the vehicle did not answer).
func consoleProblem(m chromedp.ConsoleMessage) bool {
	switch {
	case m.IsException(), strings.Contains(m.Text, "Content Security Policy"):
		return true
	case strings.Contains(m.Text, "Failed to load resource"):
		return strings.Contains(m.URL, "/static/")
	}
	return m.Type == chromedp.ConsoleError
}

// finish reports console problems and, when the test failed, saves the
// artifacts.
func (b *browser) finish() {
	b.mu.Lock()
	problems := append([]string(nil), b.problems...)
	b.mu.Unlock()
	for _, p := range problems {
		b.t.Errorf("browser console: %s", p)
	}
	if b.t.Failed() {
		b.saveArtifacts("failure")
	}
}

// Step names the part of the flow that runs now (in the log with the time
// the previous step took, and in the names of the artifacts).
func (b *browser) Step(name string) {
	b.t.Helper()
	now := time.Now()
	b.mu.Lock()
	prev, took := b.step, now.Sub(b.stepAt)
	if name != "" {
		b.step = name
	}
	b.stepAt = now
	b.mu.Unlock()
	if prev != "" {
		b.t.Logf("browser: %-28s %6.2fs", prev, took.Seconds())
	}
}

// Done logs the last step and the total time.
func (b *browser) Done() {
	b.t.Helper()
	b.Step("")
	b.t.Logf("browser: whole flow %.2fs", time.Since(b.started).Seconds())
}

// artifactsDir is $FLEETPLANE_ARTIFACTS or a new directory under the
// system's temporary directory (t.TempDir is removed after the test).
func artifactsDir(t *testing.T) (string, error) {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	if d := os.Getenv("FLEETPLANE_ARTIFACTS"); d != "" {
		dir := filepath.Join(d, name+"-"+time.Now().Format("20060102-150405"))
		return dir, os.MkdirAll(dir, 0o755)
	}
	return os.MkdirTemp("", "fleetplane-"+name+"-*")
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// saveArtifacts writes a full-page screenshot, the page's HTML and URL,
// the console, the accepted dialogs and the server log, and prints where.
func (b *browser) saveArtifacts(why string) {
	t := b.t
	dir, err := artifactsDir(t)
	if err != nil {
		t.Logf("browser artifacts: %v", err)
		return
	}
	b.mu.Lock()
	b.shots++
	prefix := fmt.Sprintf("%02d-%s-%s", b.shots, why, unsafeName.ReplaceAllString(b.step, "_"))
	console := strings.Join(b.console, "\n")
	dialogs := strings.Join(b.dialogs, "\n")
	b.mu.Unlock()
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, prefix+"-"+name), data, 0o644); err != nil {
			t.Logf("browser artifacts: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		write("page.png", png)
	} else {
		t.Logf("browser artifacts: screenshot: %v", err)
	}
	if html, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`)); err == nil {
		write("page.html", []byte(html))
	}
	if loc, err := chromedp.Run(ctx, chromedp.Location()); err == nil {
		write("url.txt", []byte(loc+"\n"))
	}
	write("console.txt", []byte(console+"\n"))
	write("dialogs.txt", []byte(dialogs+"\n"))
	if b.serverLog != nil {
		write("server.log", b.serverLog())
	}
	write("chromium.log", b.chromeLog.Bytes())
	t.Logf("browser artifacts (screenshot, HTML, console, server and Chromium logs) saved in %s", dir)
}

// run runs actions with the step timeout and fails the test on error.
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// load runs actions that navigate (a link, a form's submit button, a URL)
// and waits for the new page; it fails the test when the page's status is
// 400 or higher, with the page's error message.
func (b *browser) load(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if status := b.loadStatus(what, actions...); status >= 400 {
		msg, _ := b.eval(`(document.querySelector('[role=alert]') || document.body).innerText`)
		b.t.Fatalf("browser: %s: %s answered %d: %s", what, b.Location(), status, msg)
	}
}

// loadStatus is load without the status check: it returns the status.
func (b *browser) loadStatus(what string, actions ...chromedp.Action[chromedp.Void]) int {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, actions...)
	if err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
	if resp == nil {
		b.t.Fatalf("browser: %s: no response", what)
	}
	return int(resp.Status)
}

// Open loads path (relative to the site) and waits for the page.
func (b *browser) Open(path string) {
	b.t.Helper()
	b.load("open "+path, chromedp.Navigate(b.base+path))
}

// Submit clicks a form's submit button (or a link) and waits for the page
// it leads to.
func (b *browser) Submit(sel string) {
	b.t.Helper()
	b.load("submit "+sel, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
}

// submitStatus is Submit without the status check: it returns the status.
func (b *browser) submitStatus(sel string) int {
	b.t.Helper()
	return b.loadStatus("submit "+sel, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
}

// Fill types value into the input sel (cleared first).
func (b *browser) Fill(sel, value string) {
	b.t.Helper()
	b.run("fill "+sel,
		chromedp.Clear(chromedp.CSS(sel), chromedp.NodeVisible),
		chromedp.SendKeys(chromedp.CSS(sel), value, chromedp.NodeVisible))
}

// Select chooses value in the <select> sel.
func (b *browser) Select(sel, value string) {
	b.t.Helper()
	b.run("select "+sel, chromedp.SetValue(chromedp.CSS(sel), value, chromedp.NodeVisible))
}

// Click clicks sel without waiting for a navigation (script-driven pages).
func (b *browser) Click(sel string) {
	b.t.Helper()
	b.run("click "+sel, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
}

// Text waits for sel and returns its visible text.
func (b *browser) Text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel), chromedp.NodeVisible))
	if err != nil {
		b.t.Fatalf("browser: text of %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// Attr waits for sel and returns its attribute name ("" when not set).
func (b *browser) Attr(sel, name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	r, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(sel), name, chromedp.NodeReady))
	if err != nil {
		b.t.Fatalf("browser: attribute %s of %s: %v", name, sel, err)
	}
	return r.Value
}

// UntilAttr waits until the attribute name of sel (the first match; ""
// when none or not set) satisfies ok, and returns it.
func (b *browser) UntilAttr(what, sel, name string, timeout time.Duration, ok func(string) bool) string {
	b.t.Helper()
	expr := fmt.Sprintf(`(() => { const e = document.querySelector(%s); return (e && e.getAttribute(%s)) || ""; })()`, jsString(sel), jsString(name))
	raw := b.Until(what, expr, timeout, func(raw []byte) bool {
		var s string
		return json.Unmarshal(raw, &s) == nil && ok(s)
	})
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

// GrantClipboard lets the site's pages read and write the clipboard
// without asking (the copy buttons; the test reads what they copied).
func (b *browser) GrantClipboard() {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	for _, name := range []string{"clipboard-read", "clipboard-write"} {
		_, err := chromedp.CallBrowser(ctx, cdpbrowser.SetPermission, cdpbrowser.SetPermissionParams{
			Permission: &cdpbrowser.PermissionDescriptor{Name: name}, Setting: cdpbrowser.PermissionSettingGranted, Origin: b.base})
		if err != nil {
			b.t.Fatalf("browser: granting %s: %v", name, err)
		}
	}
}

// Clipboard is the clipboard's text (what a paste would insert).
func (b *browser) Clipboard() string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`navigator.clipboard.readText()`, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("browser: reading the clipboard: %v", err)
	}
	return s
}

// Location is the page's URL.
func (b *browser) Location() string {
	b.t.Helper()
	loc, err := b.eval(`location.href`)
	if err != nil {
		b.t.Fatalf("browser: location: %v", err)
	}
	return loc
}

// eval evaluates a JavaScript expression whose value is a string.
func (b *browser) eval(expr string) (string, error) {
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[string](expr))
}

// Until evaluates expr (a JavaScript expression whose value is JSON-able)
// every interval until ok accepts its JSON, and returns that JSON. The
// polling runs here, not in the page, so it survives reloads and
// navigations; it fails the test after timeout with the last value.
func (b *browser) Until(what, expr string, timeout time.Duration, ok func(raw []byte) bool) []byte {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	var last []byte
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
		raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr))
		cancel()
		if err == nil {
			last, lastErr = raw, nil
			if ok(raw) {
				return raw
			}
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) || b.ctx.Err() != nil {
			b.t.Fatalf("browser: %s: not after %s; last value %s (error %v)", what, timeout, last, lastErr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// UntilText waits until the visible text of sel (the first match, "" when
// none) satisfies ok, and returns it.
func (b *browser) UntilText(what, sel string, timeout time.Duration, ok func(string) bool) string {
	b.t.Helper()
	expr := fmt.Sprintf(`(() => { const e = document.querySelector(%s); return e ? e.innerText : ""; })()`, jsString(sel))
	raw := b.Until(what, expr, timeout, func(raw []byte) bool {
		var s string
		return json.Unmarshal(raw, &s) == nil && ok(s)
	})
	var s string
	_ = json.Unmarshal(raw, &s)
	return strings.TrimSpace(s)
}

func jsString(s string) string {
	j, _ := json.Marshal(s)
	return string(j)
}

// lockedBuffer is a bytes buffer safe for concurrent writers (logs).
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	return len(p), nil
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.buf...)
}
