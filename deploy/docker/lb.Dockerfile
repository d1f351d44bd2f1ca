# lb image, built by `make images` from a statically linked release binary.
# FROM scratch: no base image to pull (this works on an engine with no registry
# access), no shell, no libc, no package manager — the binary is all there is.
FROM scratch
COPY lb /usr/local/bin/lb
# Unprivileged user (no /etc/passwd needed for a numeric id). Docker lets
# containers bind ports below 1024 without privileges (ip_unprivileged_port_start=0).
USER 65532:65532
EXPOSE 80 443 9901
# No curl in the image: lb checks its own admin /health.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/lb", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/lb"]
CMD ["run", "-c", "/etc/lb/lb.toml"]
