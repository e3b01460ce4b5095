package enroll

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/fleetplane/fleetplane/internal/natsauth"
	"github.com/nats-io/nkeys"
)

// WriteFileAtomic writes b to path through a temp file in the same
// directory, fsynced and renamed, so a reader (nats-server re-reading the
// creds file on reconnect) sees the old or the new content, never a torn one.
func WriteFileAtomic(path string, b []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
	if err := f.Chmod(mode); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// NewKey creates the vehicle's user nkey. Its seed never leaves the vehicle.
func NewKey() (nkeys.KeyPair, error) { return nkeys.CreateUser() }

// WriteSeed writes a key's seed (mode 0600).
func WriteSeed(path string, kp nkeys.KeyPair) error {
	seed, err := kp.Seed()
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, append(seed, '\n'), 0o600)
}

// ReadSeed reads a seed file written by WriteSeed and refuses one that
// others can read.
func ReadSeed(path string) (nkeys.KeyPair, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("seed file %s has mode %v: want 0600 (chmod 600 %s)", path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return nil, fmt.Errorf("seed file %s: %w", path, err)
	}
	if pub, _ := kp.PublicKey(); len(pub) == 0 || pub[0] != 'U' {
		return nil, fmt.Errorf("seed file %s does not hold a user key", path)
	}
	return kp, nil
}

// WriteCreds writes a NATS creds file (JWT + seed, mode 0600) atomically.
func WriteCreds(path, userJWT string, kp nkeys.KeyPair) error {
	seed, err := kp.Seed()
	if err != nil {
		return err
	}
	b, err := natsauth.FormatCreds(userJWT, seed)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, b, 0o600)
}
