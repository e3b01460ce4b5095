// Package pgserver starts and stops a local PostgreSQL server from the
// operating system's server binaries (initdb, pg_ctl, postgres). It is what
// `fleetplane dev` runs when no DATABASE_URL is given (a persistent data
// directory under ./.fleetplane/pg) and what internal/pgtest runs for
// throwaway test servers (Options.Ephemeral).
//
// The server listens on 127.0.0.1 only and trusts every local connection
// (no password): it is for development and tests, never for production.
//
// Postgres refuses to run as root; when the caller is root the server runs as
// the "postgres" user, which then owns Options.Dir.
//
// It imports the standard library and pgx only.
package pgserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultBinDir is where Debian and Ubuntu install the PostgreSQL 15 server.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// Options say where and how to run the server.
type Options struct {
	// Dir is the parent of the data directory (Dir/data), the unix socket
	// directory (Dir/sock) and the server log (Dir/postgres.log). It is
	// created if missing; an existing data directory is reused.
	Dir string
	// BinDir holds initdb and pg_ctl. Default: DefaultBinDir if it exists,
	// else the directory of pg_ctl on PATH, else the newest
	// /usr/lib/postgresql/*/bin.
	BinDir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Ephemeral trades durability for speed (fsync=off, no full-page
	// writes, asynchronous commit): for servers whose data is thrown away.
	// A persistent server keeps the defaults, fsync on.
	Ephemeral bool
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
}

// Server is a running Postgres server started by Start.
type Server struct {
	dir, dataDir, sockDir, logPath, binDir string
	port                                   int
	cred                                   *syscall.Credential // nil: run as the caller
	logf                                   func(format string, args ...any)

	mu      sync.Mutex
	stopped bool
}

const (
	startTimeout = 60 * time.Second
	// maxLogSize is the size above which the log is rotated at start.
	maxLogSize = 10 << 20
	// confName is the file the server includes from postgresql.conf; Start
	// rewrites it every time, so that port and options follow Options.
	confName = "fleetplane.conf"
	// maxSocketPath is sizeof(sun_path) minus the NUL on Linux.
	maxSocketPath = 107
)

// Start starts a Postgres server in o.Dir, creating the cluster with initdb
// when o.Dir/data holds none. A server still running on that data directory
// (left behind by a process that was killed) is stopped first. Start returns
// once the server accepts connections.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, errors.New("pgserver: Options.Dir is required")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("pgserver: resolving %s: %w", o.Dir, err)
	}
	binDir, err := findBinDir(o.BinDir)
	if err != nil {
		return nil, err
	}
	s := &Server{
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		sockDir: filepath.Join(dir, "sock"),
		logPath: filepath.Join(dir, "postgres.log"),
		binDir:  binDir,
		port:    o.Port,
		logf:    o.Logf,
	}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	// Parents we create must let the postgres user through; Dir itself
	// becomes the postgres user's.
	for _, d := range []struct {
		path string
		perm os.FileMode
	}{{filepath.Dir(dir), 0o755}, {dir, 0o700}, {s.sockDir, 0o700}} {
		if err := os.MkdirAll(d.path, d.perm); err != nil {
			return nil, fmt.Errorf("pgserver: creating %s: %w", d.path, err)
		}
	}
	if s.cred, err = credential(); err != nil {
		return nil, err
	}
	if s.cred != nil {
		if err := checkReachable(dir, s.cred); err != nil {
			return nil, err
		}
		if err := chownTree(dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return nil, err
		}
	}
	if err := s.stopLeftover(ctx); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(s.dataDir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := s.initdb(ctx); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("pgserver: checking data directory: %w", err)
	}
	if s.port == 0 {
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
	}
	if err := s.writeConf(o.Ephemeral); err != nil {
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// URL returns the connection URL of database dbname as the superuser.
func (s *Server) URL(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the TCP port the server listens on (on 127.0.0.1).
func (s *Server) Port() int { return s.port }

// LogPath returns the path of the server log.
func (s *Server) LogPath() string { return s.logPath }

// CreateDatabase creates database name; one that exists is left alone.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("pgserver: connecting to create database %q: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database
		return nil
	} else if err != nil {
		return fmt.Errorf("pgserver: creating database %q: %w", name, err)
	}
	return nil
}

// Stop shuts the server down (fast mode: open transactions are rolled back)
// and waits until it has exited. Stopping a stopped server does nothing.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout+5*time.Second)
	defer cancel()
	out, err := s.run(ctx, "pg_ctl", "-D", s.dataDir, "-m", "fast", "-w", "-t", strconv.Itoa(int(startTimeout.Seconds())), "-s", "stop")
	if err != nil {
		pid, pidErr := readPid(filepath.Join(s.dataDir, "postmaster.pid"))
		if pidErr == nil && isPostgres(pid) {
			return fmt.Errorf("pgserver: stopping postgres (pid %d) in %s: %w\n%s", pid, s.dataDir, err, out)
		}
		// No server: someone else stopped or killed it already.
	}
	s.stopped = true
	s.logf("postgres on port %d stopped", s.port)
	return nil
}

// Kill stops, without waiting for clients or a checkpoint, a server still
// running on the data directory under dir (Options.Dir): the cleanup for a
// process that died without calling Stop. It returns once the server has
// exited; no server running is no error.
func Kill(dir string) error {
	pidFile := filepath.Join(dir, "data", "postmaster.pid")
	pid, err := readPid(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	if !isPostgres(pid) {
		return nil
	}
	// SIGQUIT is postgres's immediate shutdown.
	if err := syscall.Kill(pid, syscall.SIGQUIT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgserver: stopping postgres (pid %d) in %s: %w", pid, dir, err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if !isPostgres(pid) {
			return nil
		}
	}
	return fmt.Errorf("pgserver: postgres (pid %d) in %s did not exit within 10s of SIGQUIT", pid, dir)
}

func (s *Server) initdb(ctx context.Context) error {
	s.logf("creating a postgres cluster in %s", s.dataDir)
	if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
		return fmt.Errorf("pgserver: creating %s: %w", s.dataDir, err)
	}
	if s.cred != nil {
		if err := os.Chown(s.dataDir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return fmt.Errorf("pgserver: %w", err)
		}
	}
	// --locale=C: sorting and case folding do not depend on the locales
	// installed on the machine; identifiers are ASCII anyway.
	out, err := s.run(ctx, "initdb", "-D", s.dataDir, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	if err != nil {
		return fmt.Errorf("pgserver: initdb in %s failed: %w\n%s", s.dataDir, err, out)
	}
	return nil
}

// writeConf writes the settings of this start and makes sure that
// postgresql.conf includes them.
func (s *Server) writeConf(ephemeral bool) error {
	sock := s.sockDir
	if len(sock)+len("/.s.PGSQL.65535") > maxSocketPath {
		s.logf("%s is too long for a unix socket path; listening on TCP only", sock)
		sock = ""
	}
	var b strings.Builder
	b.WriteString("# Written by fleetplane (internal/pgserver) at every start; edits are lost.\n")
	fmt.Fprintf(&b, "listen_addresses = %s\n", confQuote("127.0.0.1"))
	fmt.Fprintf(&b, "port = %d\n", s.port)
	fmt.Fprintf(&b, "unix_socket_directories = %s\n", confQuote(sock))
	if ephemeral {
		// Throwaway data: durability costs time and buys nothing.
		b.WriteString("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
		b.WriteString("max_connections = 200\n")
	}
	if err := s.writeFile(filepath.Join(s.dataDir, confName), []byte(b.String())); err != nil {
		return err
	}
	mainConf := filepath.Join(s.dataDir, "postgresql.conf")
	cur, err := os.ReadFile(mainConf)
	if err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	include := "include_if_exists = " + confQuote(confName)
	if bytes.Contains(cur, []byte(include)) {
		return nil
	}
	cur = append(cur, "\n# Added by fleetplane (internal/pgserver).\n"+include+"\n"...)
	return s.writeFile(mainConf, cur)
}

func (s *Server) writeFile(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	if s.cred != nil {
		if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return fmt.Errorf("pgserver: %w", err)
		}
	}
	return nil
}

func (s *Server) start(ctx context.Context) error {
	if fi, err := os.Stat(s.logPath); err == nil && fi.Size() > maxLogSize {
		_ = os.Rename(s.logPath, s.logPath+".1")
	}
	var offset int64
	if fi, err := os.Stat(s.logPath); err == nil {
		offset = fi.Size()
	}
	out, err := s.run(ctx, "pg_ctl", "-D", s.dataDir, "-l", s.logPath, "-w",
		"-t", strconv.Itoa(int(startTimeout.Seconds())), "-s", "start")
	if err != nil {
		return fmt.Errorf("pgserver: starting postgres in %s on port %d failed: %w\n%s--- %s (tail) ---\n%s",
			s.dataDir, s.port, err, out, s.logPath, tail(s.logPath, offset, 30))
	}
	s.logf("postgres started on 127.0.0.1:%d (data %s, log %s)", s.port, s.dataDir, s.logPath)
	return nil
}

// stopLeftover stops a server that still runs on the data directory, and
// removes a pid file that no running server owns.
func (s *Server) stopLeftover(ctx context.Context) error {
	pidFile := filepath.Join(s.dataDir, "postmaster.pid")
	pid, err := readPid(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	if !isPostgres(pid) {
		// A crash or a reboot left the file; its pid may now belong to an
		// unrelated process, which would make postgres refuse to start.
		s.logf("removing stale %s (pid %d is not a postgres server)", pidFile, pid)
		if err := os.Remove(pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pgserver: removing stale pid file: %w", err)
		}
		return nil
	}
	s.logf("stopping the postgres server (pid %d) still running on %s", pid, s.dataDir)
	out, err := s.run(ctx, "pg_ctl", "-D", s.dataDir, "-m", "fast", "-w", "-t", strconv.Itoa(int(startTimeout.Seconds())), "-s", "stop")
	if err != nil {
		return fmt.Errorf("pgserver: a postgres server (pid %d) already runs on %s and stopping it failed: %w\n%s", pid, s.dataDir, err, out)
	}
	return nil
}

// run runs one of the server binaries, as the postgres user when the caller
// is root, and returns its combined output.
func (s *Server) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, name), args...)
	cmd.Dir = s.dir // the caller's working directory may be unreadable for postgres
	cmd.Env = cleanEnv()
	// Own process group: a Ctrl-C in the terminal reaches the Go program,
	// which stops the server in order, instead of reaching postgres directly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// pg_ctl hands the postmaster /dev/null and the log file, but if anything
	// ever kept our pipe open, do not hang on it.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

// cleanEnv is the environment without PG* variables, which would point the
// binaries at another server or data directory, and with messages in English.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// credential returns who the server runs as: nil (the caller) unless the
// caller is root, which postgres refuses to run as.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgserver: running as root, and postgres refuses to; there is no \"postgres\" user to run it as: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("pgserver: user postgres has a non-numeric uid %q or gid %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// checkReachable fails when an ancestor of dir cannot be searched by the
// user of cred, which initdb would report far less clearly.
func checkReachable(dir string, cred *syscall.Credential) error {
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("pgserver: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		if ok {
			switch {
			case st.Uid == cred.Uid && mode&0o100 != 0,
				st.Gid == cred.Gid && mode&0o010 != 0,
				mode&0o001 != 0:
			default:
				return fmt.Errorf("pgserver: postgres runs as uid %d, which cannot enter %s (mode %v, owner uid %d); "+
					"allow it (chmod o+x %s) or pick another Dir", cred.Uid, p, mode, st.Uid, p)
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func chownTree(dir string, uid, gid int) error {
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == uid && int(st.Gid) == gid {
			return nil
		}
		return os.Lchown(path, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("pgserver: handing %s to the postgres user: %w", dir, err)
	}
	return nil
}

// findBinDir returns the directory that holds initdb and pg_ctl.
func findBinDir(want string) (string, error) {
	has := func(dir string) bool {
		for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if want != "" {
		if !has(want) {
			return "", fmt.Errorf("pgserver: %s does not hold the postgres server binaries (initdb, pg_ctl, postgres)", want)
		}
		return want, nil
	}
	if has(DefaultBinDir) {
		return DefaultBinDir, nil
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if dir := filepath.Dir(p); has(dir) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest major version first: sort by the numeric version directory.
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
	}
	return "", errors.New("pgserver: no postgres server binaries found (looked in " + DefaultBinDir +
		", PATH and /usr/lib/postgresql/*/bin); install them (apt-get install postgresql) or set DATABASE_URL")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgserver: picking a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// confQuote quotes a postgresql.conf string value.
func confQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func readPid(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: malformed pid %q", path, strings.TrimSpace(line))
	}
	return pid, nil
}

// isPostgres reports whether pid is a live postgres process.
func isPostgres(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		// No /proc: trust the pid file, as pg_ctl does.
		return !errors.Is(err, os.ErrNotExist) || !dirExists("/proc/self")
	}
	// "pid (comm) state ...": a zombie (state Z) has exited; its parent
	// (init, or whoever adopted it) has not reaped it yet.
	open, close := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || close < open || len(stat) < close+3 {
		return false
	}
	return string(stat[open+1:close]) == "postgres" && stat[close+2] != 'Z'
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// tail returns the last n lines of the file at path, from offset on.
func tail(path string, offset int64, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if offset > 0 && offset <= int64(len(b)) {
		b = b[offset:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
