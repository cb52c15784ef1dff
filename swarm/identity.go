package swarm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// IdentityFile is the name of the peer key in a state directory (a node's
// --state, a coordinator's --cache).
const IdentityFile = "identity.key"

// ErrIdentityInUse is wrapped by OpenIdentity's error when another running
// process holds the identity.
var ErrIdentityInUse = errors.New("peer identity in use by another running process")

// Identity is a peer key held for the life of a process.
type Identity struct {
	Key  crypto.PrivKey
	Path string
	// Created is true when the key file did not exist and was made now.
	Created bool
	lock    *os.File
}

// OpenIdentity loads the peer key at path, creating it (LoadOrCreateKey)
// when missing, and takes an exclusive lock on path+".lock" for as long as
// the process runs or until Close: two running processes with one peer ID
// would take each other's connections and streams, so the second is
// refused with ErrIdentityInUse. The lock is released by the operating
// system when the process dies, kill -9 included.
func OpenIdentity(path string) (*Identity, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	lf, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	if err := lockFile(lf); err != nil {
		b, _ := os.ReadFile(path + ".lock")
		lf.Close()
		holder := strings.TrimSpace(string(b))
		if _, perr := strconv.Atoi(holder); perr == nil {
			holder = "pid " + holder
		} else {
			holder = "another process"
		}
		return nil, fmt.Errorf("peer identity %s is held by %s (%w: %v); give this process its own state directory or --identity", path, holder, ErrIdentityInUse, err)
	}
	lf.Truncate(0)
	lf.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	_, statErr := os.Stat(path)
	k, err := LoadOrCreateKey(path)
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	return &Identity{Key: k, Path: path, Created: errors.Is(statErr, os.ErrNotExist), lock: lf}, nil
}

// Close releases the lock.
func (id *Identity) Close() error {
	if id == nil || id.lock == nil {
		return nil
	}
	err := id.lock.Close()
	id.lock = nil
	return err
}

// ReadKey reads the peer key at path without creating or locking it (for
// tools that sign on behalf of a running process, like `carryon roster`).
func ReadKey(path string) (crypto.PrivKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	k, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	return k, nil
}
