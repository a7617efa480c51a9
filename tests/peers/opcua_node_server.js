// An OPC UA server built on node-opcua, a peer we did not write, for Fieldline's tests and
// benchmarks. It listens on 127.0.0.1 only and keeps its PKI in the folder given.
//
//   node opcua_node_server.js --pki DIR [--port 0] [--spec spec.json]
//                             [--generate N --update-ms MS] [--user NAME:PASSWORD]
//                             [--user-cert PEM]...
//
// spec.json: {"variables": [{"name": "temperature", "type": "Double", "value": 21.5,
//             "writable": true}, ...]}; each variable's NodeId is ns=1;s=<name>.
// --user accepts that user name and password instead of anonymous clients; --user-cert accepts
// X509 user identities with that certificate (and no other, and no anonymous clients).
// --generate N adds N Double variables ns=1;s=v0 … v<N-1>, all changed every MS ms (a
// benchmark load); each change is a new value, so every monitored item notifies.
//
// Prints "READY <port>" once listening. Commands on stdin, one per line, answered with one
// line: "set NAME JSON_VALUE" -> "ok", "get NAME" -> the value as JSON, "bad NAME" (status
// BadSensorFailure) -> "ok". Security: None, Basic256Sha256 and Aes128_Sha256_RsaOaep, Sign
// and SignAndEncrypt; any client certificate is accepted (the test of server trust is the
// client's job). The server certificate (DIR/server/own/certs/certificate.pem, made once
// with openssl) names urn:fieldline:test:node-opcua as its first subject alternative name
// and 127.0.0.1, as strict clients expect.
"use strict";
const path = require("path");
const fs = require("fs");
const readline = require("readline");
// Standard output carries only READY and the replies to commands: node-opcua's warnings go
// to standard error, its chatter nowhere.
const util = require("util");
console.warn = (...args) => process.stderr.write(`${util.format(...args)}\n`);
for (const level of ["log", "info", "debug"]) {
    console[level] = () => {};
}
const opcua = require("node-opcua");

function arg(name, fallback) {
    const i = process.argv.indexOf(name);
    return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const TYPES = {
    Boolean: opcua.DataType.Boolean,
    Int16: opcua.DataType.Int16,
    Int32: opcua.DataType.Int32,
    Int64: opcua.DataType.Int64,
    UInt16: opcua.DataType.UInt16,
    UInt32: opcua.DataType.UInt32,
    UInt64: opcua.DataType.UInt64,
    Float: opcua.DataType.Float,
    Double: opcua.DataType.Double,
    String: opcua.DataType.String,
};

async function main() {
    const pki = arg("--pki");
    if (!pki) {
        throw new Error("--pki DIR is required");
    }
    const port = Number(arg("--port", "0"));
    const specPath = arg("--spec");
    const spec = specPath ? JSON.parse(fs.readFileSync(specPath, "utf8")) : { variables: [] };
    const generate = Number(arg("--generate", "0"));
    const updateMs = Number(arg("--update-ms", "1000"));
    const user = arg("--user");
    const userCerts = process.argv.flatMap((a, i) =>
        a === "--user-cert" && i + 1 < process.argv.length ? [process.argv[i + 1]] : [],
    );

    const applicationUri = "urn:fieldline:test:node-opcua";
    const { certificateFile, privateKeyFile } = ownCertificate(pki, applicationUri);
    const serverCertificateManager = new opcua.OPCUACertificateManager({
        rootFolder: path.join(pki, "server"),
        automaticallyAcceptUnknownCertificate: true,
    });
    await serverCertificateManager.initialize();
    // User certificates are trusted only when given: a separate trust list from the one for
    // the certificates of client applications.
    const userCertificateManager = new opcua.OPCUACertificateManager({
        rootFolder: path.join(pki, "users"),
        automaticallyAcceptUnknownCertificate: false,
    });
    await userCertificateManager.initialize();
    for (const file of userCerts) {
        await userCertificateManager.trustCertificate(require("node-opcua-crypto").readCertificate(file));
    }
    const userManager = user
        ? {
              isValidUser: (name, password) => `${name}:${password}` === user,
          }
        : undefined;
    const server = new opcua.OPCUAServer({
        port: port === 0 ? await freePort() : port,
        host: "127.0.0.1",
        // Endpoint URLs and the self-signed certificate name 127.0.0.1, where the server is.
        hostname: "127.0.0.1",
        alternateHostname: ["127.0.0.1"],
        serverCertificateManager,
        userCertificateManager: userCerts.length > 0 ? userCertificateManager : serverCertificateManager,
        certificateFile,
        privateKeyFile,
        serverInfo: { applicationUri, productUri: "urn:fieldline:test", applicationName: { text: "node-opcua test peer" } },
        securityPolicies: [
            opcua.SecurityPolicy.None,
            opcua.SecurityPolicy.Basic256Sha256,
            opcua.SecurityPolicy.Aes128_Sha256_RsaOaep,
        ],
        securityModes: [
            opcua.MessageSecurityMode.None,
            opcua.MessageSecurityMode.Sign,
            opcua.MessageSecurityMode.SignAndEncrypt,
        ],
        allowAnonymous: !user && userCerts.length === 0,
        userManager,
        serverCapabilities: {
            maxSessions: 50,
            operationLimits: {
                maxMonitoredItemsPerCall: 1000,
                maxNodesPerRead: 1000,
                maxNodesPerWrite: 1000,
            },
        },
        maxConnectionsPerEndpoint: 50,
    });
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    const namespace = addressSpace.getOwnNamespace();
    const folder = namespace.addFolder(addressSpace.rootFolder.objects, { browseName: "Line" });

    const variables = new Map();
    for (const v of spec.variables || []) {
        const dataType = TYPES[v.type];
        if (dataType === undefined) {
            throw new Error(`unknown type ${v.type}`);
        }
        const variable = namespace.addVariable({
            componentOf: folder,
            browseName: v.name,
            nodeId: `s=${v.name}`,
            dataType: v.type,
            accessLevel: v.writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
            userAccessLevel: v.writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
        });
        variable.setValueFromSource(variant(dataType, v.value));
        variables.set(v.name, { variable, dataType });
    }
    const generated = [];
    for (let i = 0; i < generate; i++) {
        const variable = namespace.addVariable({
            componentOf: folder,
            browseName: `v${i}`,
            nodeId: `s=v${i}`,
            dataType: "Double",
        });
        variable.setValueFromSource({ dataType: opcua.DataType.Double, value: 0 });
        generated.push(variable);
    }
    await server.start();
    if (generated.length > 0) {
        let tick = 0;
        setInterval(() => {
            tick += 1;
            const now = new Date();
            for (let i = 0; i < generated.length; i++) {
                generated[i].setValueFromSource(
                    { dataType: opcua.DataType.Double, value: tick + i / 1e6 },
                    opcua.StatusCodes.Good,
                    now,
                );
            }
        }, updateMs);
    }
    process.stdout.write(`READY ${server.endpoints[0].port}\n`);

    const rl = readline.createInterface({ input: process.stdin });
    rl.on("line", (line) => {
        const [command, name, ...rest] = line.trim().split(" ");
        const entry = variables.get(name);
        if (!entry) {
            process.stdout.write(`error unknown variable ${name}\n`);
            return;
        }
        try {
            if (command === "set") {
                entry.variable.setValueFromSource(variant(entry.dataType, JSON.parse(rest.join(" "))));
                process.stdout.write("ok\n");
            } else if (command === "bad") {
                entry.variable.setValueFromSource(
                    entry.variable.readValue().value,
                    opcua.StatusCodes.BadSensorFailure,
                );
                process.stdout.write("ok\n");
            } else if (command === "get") {
                let v = entry.variable.readValue().value.value;
                if (Array.isArray(v) && v.length === 2) {
                    // node-opcua keeps 64-bit integers as [high, low] 32-bit words.
                    const wide = (BigInt(v[0] >>> 0) << 32n) | BigInt(v[1] >>> 0);
                    v = entry.dataType === opcua.DataType.Int64 ? BigInt.asIntN(64, wide) : wide;
                }
                process.stdout.write(`${typeof v === "bigint" ? v.toString() : JSON.stringify(v)}\n`);
            } else {
                process.stdout.write(`error unknown command ${command}\n`);
            }
        } catch (e) {
            process.stdout.write(`error ${e.message}\n`);
        }
    });
    rl.on("close", async () => {
        await server.shutdown(0);
        process.exit(0);
    });
}

function variant(dataType, value) {
    if (dataType === opcua.DataType.Int64 || dataType === opcua.DataType.UInt64) {
        const coerce = dataType === opcua.DataType.Int64 ? opcua.coerceInt64 : opcua.coerceUInt64;
        return new opcua.Variant({
            dataType,
            arrayType: opcua.VariantArrayType.Scalar,
            value: coerce(value),
        });
    }
    return { dataType, value };
}

/// The server's certificate and key, made with openssl on first use and kept in the PKI folder
/// (so a restarted server has the same certificate).
function ownCertificate(pki, applicationUri) {
    const dir = path.join(pki, "server", "own");
    const certificateFile = path.join(dir, "certs", "certificate.pem");
    const privateKeyFile = path.join(dir, "private", "private_key.pem");
    if (!fs.existsSync(certificateFile) || !fs.existsSync(privateKeyFile)) {
        fs.mkdirSync(path.dirname(certificateFile), { recursive: true });
        fs.mkdirSync(path.dirname(privateKeyFile), { recursive: true });
        require("child_process").execFileSync(
            "openssl",
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "365",
                "-keyout", privateKeyFile, "-out", certificateFile,
                "-subj", "/CN=Fieldline node-opcua test peer",
                "-addext", `subjectAltName=URI:${applicationUri},IP:127.0.0.1,DNS:localhost`,
                "-addext", "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,dataEncipherment,keyCertSign",
                "-addext", "extendedKeyUsage=serverAuth,clientAuth",
                "-addext", "basicConstraints=critical,CA:FALSE",
            ],
            { stdio: ["ignore", "ignore", "pipe"] },
        );
    }
    return { certificateFile, privateKeyFile };
}

function freePort() {
    return new Promise((resolve, reject) => {
        const srv = require("net").createServer();
        srv.listen(0, "127.0.0.1", () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
        srv.on("error", reject);
    });
}

main().catch((e) => {
    process.stderr.write(`opcua_node_server: ${e.stack || e}\n`);
    process.exit(1);
});
