// A BitTorrent peer built on WebTorrent's ut_pex + bittorrent-protocol, for minibt's PEX tests.
// Loopback only; no DHT, no trackers.  stdout: one JSON object per line.
//
//   node pex_peer.mjs honest INFOHASH_HEX ADD4 ADD6
//       listen on 127.0.0.1:0 (prints {"type":"listening","port":N}); for each connection use
//       ut_pex, addPeer(ADD4, {isSender, supportsUtp}) and addPeer6(ADD6), start() (first message after
//       ut_pex's 65 s interval); print every 'peer' / 'dropped' event and the close.
//   node pex_peer.mjs attack INFOHASH_HEX HOST PORT LOCAL_IP KIND
//       dial minibt from LOCAL_IP, and once minibt's extension handshake arrived misbehave:
//       KIND=flood: 5 ut_pex messages back to back (BEP 11: at most one per minute);
//       KIND=oversize: one 600 KiB ut_pex message (libtorrent's cap is 500 KiB);
//       KIND=malformed: a ut_pex message that is a bencoded list, not a dictionary.
import net from 'net'
import crypto from 'crypto'
import Protocol from 'bittorrent-protocol'
import utPex from 'ut_pex'
import string2compact from 'string2compact'

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const peerId = () => Buffer.concat([Buffer.from('-WW0001-'), crypto.randomBytes(6)]).toString('hex').padEnd(40, '0').slice(0, 40)

function setup (socket, infoHash, onExtHandshake) {
  const wire = new Protocol()
  socket.pipe(wire).pipe(socket)
  wire.use(utPex())
  wire.ut_pex.on('peer', (peer, flags) => out({ type: 'peer', peer, flags }))
  wire.ut_pex.on('dropped', (peer) => out({ type: 'dropped', peer }))
  wire.ut_pex.on('warning', (err) => out({ type: 'warning', message: String(err && err.message) }))
  wire.on('extended', (ext, obj) => {
    if (ext === 'handshake') {
      out({ type: 'ext_handshake', m: Object.keys((obj && obj.m) || {}) })
      onExtHandshake(wire)
    }
  })
  const closed = (how) => () => { out({ type: 'closed', how }); }
  socket.on('close', closed('close'))
  socket.on('error', (e) => out({ type: 'socket_error', message: String(e.message) }))
  return wire
}

const [mode, infoHash, ...rest] = process.argv.slice(2)

if (mode === 'honest') {
  const [add4, add6] = rest
  const server = net.createServer((socket) => {
    const wire = setup(socket, infoHash, (w) => {
      w.ut_pex.addPeer(add4, { isSender: true, supportsUtp: true })
      w.ut_pex.addPeer6(add6, { isReachable: true })
      w.ut_pex.start()
      out({ type: 'started' })
    })
    wire.on('handshake', (ih) => {
      out({ type: 'handshake', infoHash: ih })
      wire.handshake(infoHash, peerId(), { dht: false })
    })
  })
  server.listen(0, '127.0.0.1', () => out({ type: 'listening', port: server.address().port }))
} else if (mode === 'attack') {
  const [host, port, localAddress, kind] = rest
  const socket = net.connect({ host, port: Number(port), localAddress })
  const wire = setup(socket, infoHash, (w) => {
    let sent = 0
    if (kind === 'flood') {
      for (let i = 0; i < 5; i++) {
        w.extended('ut_pex', { added: string2compact([`127.0.1.${i + 1}:${7000 + i}`]), 'added.f': Buffer.from([0]) })
        sent++
      }
    } else if (kind === 'oversize') {
      w.extended('ut_pex', { added: Buffer.alloc(600 * 1024 - (600 * 1024) % 6) })
      sent++
    } else if (kind === 'malformed') {
      w.extended('ut_pex', Buffer.from('l5:added6:abcdefe'))
      sent++
    }
    out({ type: 'sent', kind, count: sent })
  })
  socket.on('connect', () => wire.handshake(infoHash, peerId(), { dht: false }))
  wire.on('handshake', (ih) => out({ type: 'handshake', infoHash: ih }))
} else {
  process.stderr.write(`unknown mode ${mode}\n`)
  process.exit(2)
}
process.stdin.on('end', () => process.exit(0)) // the harness died or asked us to stop
process.stdin.resume()
