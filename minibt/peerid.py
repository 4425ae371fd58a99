"""Client names from peer ids (wiki.theory.org "peer_id" conventions, as libtorrent's identify_client).

Styles understood:
- Azureus: ``-XXVVVV-`` (two-letter client code, four version characters 0-9/A-Z);
  Transmission's own rules (``-TR3000-`` = 3.00, ``-TR4060-`` = 4.0.6), rakshasa libTorrent in hex;
- Mainline: ``M4-3-6--`` (letter, then dash-separated decimals), and aria2 ``A2-1-36-0-``;
- Shadow: ``S58B-----`` (one letter, up to five base-64 version characters padded with ``-``, ``---``).
Anything else is ``"unknown"`` (with the printable prefix when there is one).  Pure, no I/O.
"""

from __future__ import annotations

import random
import re

# Azureus-style two-letter codes (wiki.theory.org BitTorrentSpecification#peer_id; libtorrent identify_client)
AZUREUS_CLIENTS: dict[str, str] = {
    "7T": "aTorrent",
    "AG": "Ares",
    "AR": "Arctic",
    "AT": "Artemis",
    "AX": "BitPump",
    "AZ": "Azureus",
    "BB": "BitBuddy",
    "BC": "BitComet",
    "BE": "baretorrent",
    "BF": "Bitflu",
    "BG": "BTG",
    "BI": "BiglyBT",
    "BL": "BitBlinder",
    "BP": "BitTorrent Pro",
    "BR": "BitRocket",
    "BS": "BTSlave",
    "BT": "BitTorrent",
    "BW": "BitWombat",
    "BX": "BittorrentX",
    "CD": "Enhanced CTorrent",
    "CT": "CTorrent",
    "DE": "Deluge",
    "DP": "Propagate Data Client",
    "EB": "EBit",
    "ES": "electric sheep",
    "FC": "FileCroc",
    "FD": "Free Download Manager",
    "FT": "FoxTorrent",
    "FX": "Freebox BitTorrent",
    "GS": "GSTorrent",
    "HK": "Hekate",
    "HL": "Halite",
    "HN": "Hydranode",
    "KG": "KGet",
    "KT": "KTorrent",
    "LC": "LeechCraft",
    "LH": "LH-ABC",
    "LP": "Lphant",
    "LT": "libtorrent (Rasterbar)",
    "LW": "LimeWire",
    "MB": "minibt",
    "MO": "MonoTorrent",
    "MP": "MooPolice",
    "MR": "Miro",
    "MT": "MoonlightTorrent",
    "NX": "Net Transport",
    "OS": "OneSwarm",
    "OT": "OmegaTorrent",
    "PB": "Protocol::BitTorrent",
    "PD": "Pando",
    "PI": "PicoTorrent",
    "QD": "QQDownload",
    "QT": "Qt 4 Torrent example",
    "RT": "Retriever",
    "SB": "Swiftbit",
    "SD": "Thunder (XunLei)",
    "SM": "SoMud",
    "SS": "SwarmScope",
    "ST": "SymTorrent",
    "SZ": "Shareaza",
    "TB": "Torch",
    "TE": "terasaur Seed Bank",
    "TL": "Tribler",
    "TN": "TorrentDotNET",
    "TR": "Transmission",
    "TS": "Torrentstorm",
    "TT": "TuoTu",
    "UL": "uLeecher!",
    "UM": "\u00b5Torrent for Mac",
    "UT": "\u00b5Torrent",
    "UW": "\u00b5Torrent Web",
    "VG": "Vagaa",
    "WD": "WebTorrent Desktop",
    "WT": "BitLet",
    "WW": "WebTorrent",
    "WY": "FireTorrent",
    "XF": "Xfplay",
    "XL": "Xunlei",
    "XS": "XSwifter",
    "XT": "XanTorrent",
    "XX": "Xtorrent",
    "ZT": "ZipTorrent",
    "lt": "libTorrent (rakshasa)",
    "pX": "pHoton",
    "qB": "qBittorrent",
}

# Shadow-style one-letter codes (wiki.theory.org)
SHADOW_CLIENTS: dict[str, str] = {
    "A": "ABC",
    "O": "Osprey Permaculture",
    "Q": "BTQueue",
    "R": "Tribler",
    "S": "Shadow's client",
    "T": "BitTornado",
    "U": "UPnP NAT Bit Torrent",
}

MAINLINE_CLIENTS: dict[str, str] = {"M": "BitTorrent", "Q": "Queen Bee"}

_AZUREUS = re.compile(rb"-([A-Za-z0-9]{2})([0-9A-Za-z]{4})-")
_ARIA2 = re.compile(rb"A2-(\d{1,3})-(\d{1,3})-(\d{1,3})-")
_MAINLINE = re.compile(rb"([A-Z])(\d{1,3})-(\d{1,3})-(\d{1,3})-")
_SHADOW = re.compile(rb"([A-Z])([0-9A-Za-z.\-]{5})---")
_SHADOW_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.-"


def _az_digit(c: str) -> int:
    """0-9 then A-Z = 10-35 (libtorrent's decode_digit); lowercase letters count as their capital."""
    return int(c, 36)


def _dotted(nums: list[int]) -> str:
    """major.minor.tiny, plus a fourth number only when it is not zero."""
    if len(nums) > 3 and nums[3] == 0:
        nums = nums[:3]
    return ".".join(str(n) for n in nums)


def _transmission(v: str) -> str:
    # Transmission's libtransmission/clients.cc: -TR0006- = 0.6, -TR0072- = 0.72, -TR111Z- = 1.11+,
    # -TR3000- = 3.00, and from 4.0 on semver digits: -TR4060- = 4.0.6.
    suffix = {"Z": "+", "X": "+", "B": " Beta"}.get(v[3], "")
    if v.startswith("000"):
        return f"0.{_az_digit(v[3])}"
    if v.startswith("00"):
        return f"0.{v[2:4]}"
    if v[0] <= "3":
        return f"{v[0]}.{v[1:3]}{suffix}"
    return f"{_az_digit(v[0])}.{_az_digit(v[1])}.{_az_digit(v[2])}{suffix}"


def _azureus(code: str, v: str) -> str:
    name = AZUREUS_CLIENTS.get(code, f"unknown ({code})")
    if code == "TR":
        return f"{name} {_transmission(v)}"
    if code == "lt":  # rakshasa libTorrent writes each number as one hex digit: -lt0D80- = 0.13.8
        return f"{name} {_dotted([int(c, 16) for c in v])}" if all(c in "0123456789abcdefABCDEF" for c in v) else name
    return f"{name} {_dotted([_az_digit(c) for c in v])}"


def decode_client(peer_id: bytes | None) -> str:
    """A human-readable client name and version for a 20-byte peer id ('' when there is none)."""
    if not peer_id:
        return ""
    m = _AZUREUS.match(peer_id)
    if m is not None:
        return _azureus(m.group(1).decode("ascii"), m.group(2).decode("ascii"))
    m = _ARIA2.match(peer_id)
    if m is not None:
        return "aria2 " + ".".join(str(int(g)) for g in m.groups())
    m = _MAINLINE.match(peer_id)
    if m is not None and m.group(1).decode("ascii") in MAINLINE_CLIENTS:
        name = MAINLINE_CLIENTS[m.group(1).decode("ascii")]
        return f"{name} " + ".".join(str(int(g)) for g in m.groups()[1:])
    m = _SHADOW.match(peer_id)
    if m is not None and m.group(1).decode("ascii") in SHADOW_CLIENTS:
        digits = m.group(2).decode("ascii").rstrip("-")
        if digits and "-" not in digits:
            version = ".".join(str(_SHADOW_DIGITS.index(c)) for c in digits)
            return f"{SHADOW_CLIENTS[m.group(1).decode('ascii')]} {version}"
    prefix = bytes(peer_id[:8])
    if prefix and all(0x20 < b < 0x7F for b in prefix):
        return f"unknown ({prefix.decode('ascii')})"
    return "unknown"


PEER_ID_PREFIX = b"-MB0100-"  # Azureus-style client id: minibt 0.1.0.0


def make_peer_id(rng: random.Random) -> bytes:
    """Our peer id: the Azureus-style prefix and 12 random characters."""
    tail = bytes(rng.choice(b"0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(12))
    return PEER_ID_PREFIX + tail
