// Package swarm is the libp2p plumbing shared by the node, the coordinator
// and `carryon pull`: a host configured for carryon (Noise, Yamux, TCP and
// optionally QUIC, a private-swarm key, an allow-list gater, raised stream
// limits for our protocols), gossipsub with carryon's topic validators, a
// content-addressed blob Store, and the blob protocol that moves adaptor
// files by CID with per-chunk hashing and an explicit acknowledgement.
//
// The package never logs; it returns errors naming the operation.
package swarm
