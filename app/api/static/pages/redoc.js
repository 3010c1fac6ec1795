// Starts Redoc on the OpenAPI document named by the container's data-spec-url (no inline script: CSP 'self').
(function () {
  "use strict";
  var container = document.getElementById("redoc-container");
  Redoc.init(container.dataset.specUrl, {}, container);
})();
