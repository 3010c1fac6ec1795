// Starts Swagger UI on the OpenAPI document named by the container's data-spec-url (no inline script:
// CSP 'self'). validatorUrl null: the default posts the spec to validator.swagger.io.
(function () {
  "use strict";
  var container = document.getElementById("swagger-container");
  window.ui = SwaggerUIBundle({
    url: container.dataset.specUrl,
    dom_id: "#swagger-container",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
