"""The subject commonName of the node's X.509 certificate (DER), its node id when the factory data has none.

Imported only for that case, so the always-loaded config module does not carry a DER parser.
"""

_CN_OID = b"\x55\x04\x03"  # 2.5.4.3 commonName
_STRING_TAGS = (0x0C, 0x13, 0x16, 0x14)  # UTF8String, PrintableString, IA5String, T61String


class CertError(ValueError):
    """The node certificate is not DER we can read a subject CN from."""


def _der_item(der, pos, end):
    """Returns (tag, content_start, content_end) of the DER item at `pos`."""
    if pos + 2 > end:
        raise CertError("truncated DER at byte %d" % pos)
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise CertError("bad DER length at byte %d" % pos)
        length = int.from_bytes(bytes(der[pos:pos + count]), "big")
        pos += count
    if pos + length > end:
        raise CertError("DER item at byte %d overruns its container" % pos)
    return tag, pos, pos + length


def _children(der, start, end):
    pos = start
    while pos < end:
        item = _der_item(der, pos, end)
        yield item
        pos = item[2]


def subject_cn(der):
    """The subject commonName of an X.509 certificate in DER."""
    tag, start, end = _der_item(der, 0, len(der))
    if tag != 0x30:
        raise CertError("certificate is not a DER SEQUENCE")
    tag, start, end = _der_item(der, start, end)  # tbsCertificate
    if tag != 0x30:
        raise CertError("tbsCertificate is not a SEQUENCE")
    fields = [item for item in _children(der, start, end)]
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject
    if len(fields) < 5 or fields[4][0] != 0x30:
        raise CertError("no subject in tbsCertificate")
    _, start, end = fields[4]
    for rdn_tag, rdn_start, rdn_end in _children(der, start, end):
        if rdn_tag != 0x31:
            raise CertError("subject RDN is not a SET")
        for atv_tag, atv_start, atv_end in _children(der, rdn_start, rdn_end):
            parts = [item for item in _children(der, atv_start, atv_end)]
            if atv_tag != 0x30 or len(parts) != 2 or parts[0][0] != 0x06:
                raise CertError("malformed subject attribute")
            if bytes(der[parts[0][1]:parts[0][2]]) != _CN_OID:
                continue
            value_tag, value_start, value_end = parts[1]
            if value_tag not in _STRING_TAGS:
                raise CertError("subject CN has unsupported string type 0x%02x" % value_tag)
            try:
                return str(bytes(der[value_start:value_end]), "utf-8")
            except (UnicodeError, ValueError):
                raise CertError("subject CN is not valid UTF-8")
    raise CertError("certificate subject has no CN")
