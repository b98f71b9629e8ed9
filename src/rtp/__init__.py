"""The media plane: SDP, ICE-lite, DTLS-SRTP and the SRTP<->RTP relay (pure cores, thin Trio edge)."""
