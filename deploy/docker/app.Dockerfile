# Demo backend image, built by `make images` from a statically linked binary.
FROM scratch
COPY app /usr/local/bin/app
USER 65532:65532
ENV PORT=3000
EXPOSE 3000
HEALTHCHECK --interval=5s --timeout=3s --start-period=3s --retries=3 \
  CMD ["/usr/local/bin/app", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/app"]
