-- wrk: POST the seed's register body (make bench, figure 1).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"name":"Bench Market","issuerId":"9b2f7c1e-1111-4a5b-8c9d-0123456789ab","assetType":"real_estate","tokenSymbol":"BENCH","tokenName":"Bench Token","totalSupply":1000000,"entityId":"9b2f7c1e-2222-4a5b-8c9d-0123456789ab","assetDetails":{}}]]
