// Package swarm is the libp2p plumbing shared by the node, the coordinator
// and `carryon pull`: a host configured for carryon (Noise, Yamux, TCP and
// optionally QUIC, a private-swarm key, an allow-list gater, raised stream
// limits for our protocols), gossipsub with carryon's topic validators, the
// DHT and mDNS, and content: a block store of UnixFS files (Blocks, on
// flatfs) and an IPFS bitswap exchange that serves and fetches them by CID
// with Kubo-compatible layouts, structural limits and penalties for peers
// that send bytes nobody asked for (Exchange, Limits).
//
// The package never logs; it returns errors naming the operation.
package swarm
