# TLS for the MQTT link: the provisioned CA (PEM or DER) becomes an SSL context that trusts
# only it and requires the server's certificate; handshake failures get a readable reason.
import binascii


class TLSError(ValueError):
    pass


def ca_der(ca):
    # The provisioned CA as DER bytes (MicroPython's ssl wants DER; PEM is accepted here).
    ca = bytes(ca)
    if ca.startswith(b"-----BEGIN"):
        lines = [ln for ln in ca.split(b"\n") if ln and not ln.startswith(b"-----")]
        return binascii.a2b_base64(b"".join(lines))
    return ca


def context(ca):
    # An SSL context that only trusts `ca` (bytes, PEM or DER) and requires the server cert.
    import ssl

    der = ca_der(ca)
    if hasattr(ssl, "create_default_context"):  # CPython (host tools, tests)
        ctx = ssl.create_default_context(cadata=der)
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=der)
    except ValueError as e:
        raise TLSError("TLS: the provisioned CA certificate cannot be parsed (%s)" % e)
    return ctx


def explain(e):
    # A readable reason for a TLS failure, or None when `e` is not one.
    t = str(e).strip()
    if not (isinstance(e, ValueError) or "SSL" in t.upper() or "CERT" in t.upper()):
        return None
    if not t:
        t = "error %r" % (e.args,)
    if "signed" in t or "CERT" in t.upper() or "certificate" in t:
        return t + " (is the broker's certificate issued by the provisioned CA?)"
    return t
